"""The photo pipeline: lightness kept exactly, colour input discarded, any size, and the shipped
engine colouring real photos better than gray."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from engines import color
from engines.metrics import AbErrorCurve, colourfulness
from engines.models import checkpoint
from engines.models.registry import ENGINES
from engines.models.unet import UNet, UNetConfig
from engines.pipeline import Colorizer, guided_upsample, load_colorizer
from engines.runtime.backends import select_backend
from tests.conftest import lightness


def _random_colorizer(working_size: int = 64) -> Colorizer:
    torch.manual_seed(0)
    model = UNet(UNetConfig(widths=(8, 16, 32, 64)))
    # Large output weights so the random model predicts strong, often out-of-gamut chroma.
    torch.nn.init.normal_(model.head.weight, std=2.0)
    return Colorizer(model.eval(), working_size, torch.device("cpu"))


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 33), (200, 121)])
def test_lightness_is_kept_at_any_size(shape, rng):
    gray = rng.random(shape, dtype=np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    out = _random_colorizer().colorize(rgb)
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    dl = np.abs(lightness(out) - lightness(rgb))
    assert dl.mean() < 0.5 and dl.max() < 3
    # The random model does add colour: the test would pass vacuously on gray output otherwise.
    # (A single near-white pixel has almost no room for chroma inside the gamut.)
    if gray.size > 1:
        assert np.abs(out - out.mean(axis=2, keepdims=True)).max() > 0.05


def test_colour_input_is_treated_as_gray(rng):
    """Only L reaches the model: a colour photo and its gray version give the same output."""
    rgb = rng.random((40, 60, 3), dtype=np.float32)
    c = _random_colorizer()
    l = torch.from_numpy(lightness(rgb)).float()[None]
    from engines.color import lightness_to_rgb_gray

    gray = lightness_to_rgb_gray(l).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(c.colorize(rgb), c.colorize(gray), atol=2e-3)


def test_8_bit_lightness_and_composition_match_the_float_path(rng):
    """The photo command's 8-bit shortcuts: L by table from the decoded levels, and RGB composed straight to
    levels; the same as the float path (then rounded) up to float rounding, on a random engine's strong
    (often out-of-gamut) chroma."""
    levels = rng.integers(0, 256, (61, 87, 3), dtype=np.uint8)
    levels[:8] = levels[:8, :, :1]  # some gray rows (R = G = B), dark and bright
    rgb = levels.astype(np.float32) / 255
    c = _random_colorizer()
    l_float, l_8 = c.lightness(rgb), c.lightness(levels)
    assert l_8.shape == l_float.shape == (1, 1, 61, 87) and l_8.dtype == torch.float32
    assert (l_8 - l_float).abs().max().item() < 5e-5
    ab = c.predict_ab(l_float)
    raw = color.lab_to_rgb(torch.cat((l_float[0], ab[0])))
    assert ((raw < -0.01) | (raw > 1.01)).any(0).float().mean() > 0.05  # the gamut mapping is exercised
    got = c.compose_u8(l_float, ab)
    want = np.rint(c.compose(l_float, ab) * 255)
    assert got.dtype == np.uint8 and got.shape == (61, 87, 3)
    diff = np.abs(got - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 2e-3


def test_working_size_bounds_engine_input():
    seen = []
    c = _random_colorizer(working_size=64)
    c.model.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    c.colorize(np.zeros((300, 500, 3), np.float32))
    c.colorize(np.zeros((10, 20, 3), np.float32))
    assert seen == [(48, 64), (16, 32)]  # long side 64, each side up to the multiple (16)


def test_engine_input_is_the_photo_stretched_to_the_multiple_not_padded():
    """A 16:9 frame at working size 96 is 54 rows; the network takes 64. Padding would repeat the last
    row ten times (content never seen in training, which cost AuC on the tuning photos); the photo is
    resampled to 64 rows instead, so every row of the input is the photo's."""
    seen = []
    c = _random_colorizer(working_size=96)
    c.model.register_forward_hook(lambda m, i, o: seen.append(i[0][0, 0].clone()))
    ramp = np.linspace(0.05, 0.95, 270, dtype=np.float32)[:, None, None]  # brighter row by row
    c.colorize(np.broadcast_to(ramp, (270, 480, 3)).copy())
    rows = seen[0].mean(dim=-1)
    assert seen[0].shape == (64, 96) and bool((rows.diff() > 0).all())


def test_checkpoint_round_trip(tmp_path):
    model = _random_colorizer().model
    ckpt = checkpoint.EngineCheckpoint(
        "regression", model.config, model.state_dict(), working_size=96, trained_on={"x": 1}
    )
    checkpoint.save(ckpt, tmp_path / "m.pt")
    back = checkpoint.load(tmp_path / "m.pt")
    assert back.working_size == 96 and back.arch == model.config and back.trained_on == {"x": 1}
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(back.build_model()(x), model(x))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_bad_checkpoint_is_a_clear_error(tmp_path, content):
    p = tmp_path / "bad.pt"
    if content is None:
        torch.save({"format": "something-else"}, p)
    else:
        p.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(p)


@pytest.fixture(scope="module")
def sample_photos():
    """Colour photos the engines never saw in training (scikit-image's sample data)."""
    import skimage.data

    return {
        n: getattr(skimage.data, n)().astype(np.float32) / 255 for n in ("astronaut", "coffee", "chelsea", "rocket")
    }


@pytest.mark.parametrize("name", list(ENGINES))
def test_shipped_engine_beats_gray_on_real_photos(name, sample_photos):
    from engines.color import rgb_to_lab

    c = load_colorizer(name, select_backend("cpu"))
    curve, gray = AbErrorCurve(), AbErrorCurve()
    colourful = []
    for rgb in sample_photos.values():
        out = c.colorize(rgb)
        assert np.abs(lightness(out) - lightness(rgb)).mean() < 1.0
        lab_true = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1))
        lab_pred = rgb_to_lab(torch.from_numpy(out).permute(2, 0, 1))
        curve.update(lab_pred[1:], lab_true[1:])
        gray.update(torch.zeros_like(lab_true[1:]), lab_true[1:])
        colourful.append(float(colourfulness(torch.from_numpy(out).permute(2, 0, 1))))
    assert curve.auc() > gray.auc()
    assert np.mean(colourful) > 10  # visibly coloured, not a faint tint


def test_engine_costs_a_small_fraction_of_eccv16():
    """Our ECCV16 re-implementation has the paper's size (about 32 M parameters, 84 GFLOPs at 256x256),
    and the U-Net costs under a tenth of it."""
    from types import SimpleNamespace

    from benchmarks.eccv16 import ECCV16
    from benchmarks.speed import gflops

    eccv = ECCV16().eval()
    eccv.config = SimpleNamespace(in_channels=1)
    assert 31e6 < sum(p.numel() for p in eccv.parameters()) < 33e6
    eccv_gflops = gflops(eccv, 256)
    assert 80 < eccv_gflops < 88
    with torch.inference_mode():
        assert eccv(torch.zeros(1, 1, 64, 96)).shape == (1, 2, 64, 96)
    assert 1.0 < gflops(UNet(UNetConfig()), 256) < eccv_gflops / 10


def _guided_upsample_in_torch(l_small, ab_small, l_full, r=2, eps=1e-3):
    """The guided filter as first written, all in torch: the reference for the OpenCV version."""

    def box(x):
        return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)

    i_small, i_full = l_small / 100, l_full / 100
    mean_i, mean_p = box(i_small), box(ab_small)
    a = (box(i_small * ab_small) - mean_i * mean_p) / (box(i_small * i_small) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    a, b = (F.interpolate(box(t), size=l_full.shape[-2:], mode="bilinear", align_corners=False) for t in (a, b))
    return a * i_full + b


@pytest.mark.parametrize(("small", "full"), [((54, 96), (480, 854)), ((7, 5), (33, 21)), ((1, 1), (4, 6))])
def test_guided_upsample_matches_the_torch_formula(small, full):
    g = torch.Generator().manual_seed(3)
    l_full = torch.rand(2, 1, *full, generator=g) * 100
    l_small = F.interpolate(l_full, size=small, mode="bilinear", antialias=True, align_corners=False)
    ab_small = torch.randn(2, 2, *small, generator=g) * 40
    got = guided_upsample(l_small, ab_small, l_full)
    assert got.shape == (2, 2, *full)
    diff = (got - _guided_upsample_in_torch(l_small, ab_small, l_full)).abs()
    # ab units (a just-noticeable difference is about 2). Float rounding of the interpolation weights,
    # amplified by the steep fits of white-noise L here (max 5e-3, mean 4e-4); on film frames the max is about 3e-5.
    assert diff.max() < 1e-2 and diff.mean() < 1e-3


@pytest.mark.parametrize("name", ["regression", "gan"])
def test_a_batch_of_photos_colours_each_as_alone(name, rng):
    """``predict_ab_many`` (one network call for photos of one work shape, full sizes differing) gives each
    photo its ``predict_ab`` alone up to float rounding; GAN photos get the noise map they get alone."""
    c = load_colorizer(name, select_backend("cpu"), working_size=64)
    sizes = [(96, 144), (97, 143), (96, 144), (95, 145), (64, 96)]  # the last is at working size
    assert len({c.work_shape(h, w) for h, w in sizes}) == 1
    grays = [cv2_blur(rng.random((h, w), dtype=np.float32)) for h, w in sizes]
    ls = [c.lightness(np.repeat(g[..., None], 3, axis=2)) for g in grays]
    many = c.predict_ab_many(ls)
    for l, ab in zip(ls, many):
        alone = c.predict_ab(l)
        assert ab.shape == alone.shape == (1, 2, *l.shape[-2:])
        assert (ab - alone).abs().max().item() < 1e-3
        assert alone.abs().max().item() > 1  # the engine does colour: the bound is not vacuous
    rgbs = [np.repeat(g[..., None], 3, axis=2) for g in grays]
    for rgb, out in zip(rgbs, c.colorize_many(rgbs)):
        assert np.abs(out - c.colorize(rgb)).max() * 255 < 1
    with pytest.raises(ValueError, match="work_shape"):
        c.predict_ab_many([ls[0], c.lightness(np.zeros((40, 40, 3), np.float32))])


def cv2_blur(x: np.ndarray) -> np.ndarray:
    """Smooth noise, so that the photos have structure the engine reacts to."""
    import cv2

    return cv2.GaussianBlur(x, (0, 0), 3)
