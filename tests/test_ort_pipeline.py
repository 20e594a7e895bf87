"""The photo path without PyTorch (``engines.ort_pipeline``): each step against PyTorch's pipeline, the
cached export's life cycle, and that a run of photos on it never imports torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from colorcli.inputs import Job
from engines import color, color_np, ort_pipeline
from engines.files import file_sha256
from engines.models.registry import get_spec
from engines.pipeline import guided_upsample, load_colorizer
from engines.runtime import bundle
from engines.runtime.backends import select_backend
from engines.runtime.shapes import work_shape

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut_gray.jpg"


def test_numpy_tables_are_the_torch_formulas():
    """The tables ``engines.color`` now takes from ``color_np`` equal the torch formulas they replaced."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    assert np.array_equal(color_np.linear_u8_table(), color.srgb_to_linear(levels).float().numpy())
    gray_l = color.rgb_to_lightness(levels.expand(3, 1, 256))[0, 0].float().numpy()
    np.testing.assert_allclose(color_np.gray_lightness_u8_table(), gray_l, rtol=0, atol=1e-5)
    white = torch.tensor(color.WHITE_D65, dtype=torch.float64)
    m = torch.linalg.inv(torch.tensor(color._RGB_TO_XYZ, dtype=torch.float64)) * white
    np.testing.assert_allclose(color_np.xyz_over_white_to_linear(np.float64), m.numpy(), rtol=1e-12)


@pytest.mark.parametrize("size", [(321, 481), (1000, 37), (97, 5), (40, 60)])
def test_antialiased_shrink_is_the_pipelines(size):
    l = torch.rand(1, 1, *size) * 100
    want = load_colorizer("regression", select_backend("cpu"))._shrink(l)[0, 0].numpy()
    got = ort_pipeline.shrink(l[0, 0].numpy(), work_shape(*size, 96, 16))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_guided_upsample_is_the_pipelines(rng):
    l_small = torch.from_numpy(rng.uniform(0, 100, (1, 1, 24, 36)).astype(np.float32))
    ab_small = torch.from_numpy(rng.uniform(-60, 60, (1, 2, 24, 36)).astype(np.float32))
    l_full = torch.from_numpy(rng.uniform(0, 100, (1, 1, 97, 150)).astype(np.float32))
    want = guided_upsample(l_small, ab_small, l_full).permute(0, 2, 3, 1)[0].numpy()
    got = ort_pipeline.guided_upsample(l_small[0, 0].numpy(), ab_small[0].numpy(), l_full[0, 0].numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)


def test_float_lightness_is_the_pipelines(rng):
    rgb = rng.uniform(0, 1, (13, 17, 3)).astype(np.float32)
    want = load_colorizer("regression", select_backend("cpu")).lightness(rgb).numpy()
    np.testing.assert_allclose(ort_pipeline.OrtColorizer.lightness(rgb), want, rtol=0, atol=1e-4)


def _photo_ls(rng) -> list[np.ndarray]:
    """Two photos' L of one work shape (a texture, so that the upsampling has edges to follow), 16:9 as
    film frames: 54 rows at the working size, stretched to the network's 64."""
    base = rng.uniform(0, 100, (1, 1, 40, 60)).astype(np.float32)
    big = F.interpolate(torch.from_numpy(base), size=(270, 481), mode="bicubic").clamp(0, 100).numpy()
    return [big, np.ascontiguousarray(big[..., ::-1])]


@pytest.mark.parametrize(
    "model, options",
    [("regression", {}), ("classification", {}), ("classification", {"temperature": 0.3, "correction": 0.0})],
)
def test_same_ab_as_pytorchs_pipeline_on_onnx_runtime(model, options, rng):
    """After one PyTorch run on the onnxruntime backend (which leaves the export), the path without
    PyTorch gives that run's ab: the same ONNX network, the same steps around it."""
    reference = load_colorizer(model, select_backend("onnxruntime"), **options)
    lite = ort_pipeline.load(model, "onnxruntime", None, None, options)
    assert lite is not None and lite.work_shape(270, 481) == reference.work_shape(270, 481) == (64, 96)
    reference.saturation = lite.saturation = 0.8
    reference.seed = lite.seed = 7
    ls = _photo_ls(rng)
    want = reference.predict_ab_many([torch.from_numpy(l) for l in ls])
    got = lite.predict_ab_many(ls)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g[0], w[0].permute(1, 2, 0).numpy(), rtol=0, atol=0.05)
    rgb = lite.compose_u8(ls[0], got[0])
    assert np.abs(rgb.astype(int) - reference.compose_u8(torch.from_numpy(ls[0]), want[0]).astype(int)).max() <= 1
    # Float RGB: within 2e-3 but for a few pixels on the gamut's edge, where the ab difference above (up to
    # 0.05) can move the gamut mapping's result a little more (2 of 390,000 values at 2.9e-3).
    diff = np.abs(lite.compose(ls[0], got[0]) - np.asarray(reference.compose(torch.from_numpy(ls[0]), want[0])))
    assert diff.max() < 1e-2 and (diff > 2e-3).mean() < 1e-4


@pytest.mark.parametrize(
    "shape, seed", [((1, 1, 64, 96), 0), ((1, 1, 96, 48), 7), ((2, 1, 5, 7), 2**32 - 1), ((1, 16), 3)]
)
def test_noise_is_torchs(shape, seed):
    want = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
    np.testing.assert_allclose(ort_pipeline.noise_like_torch(shape, seed), want, rtol=0, atol=2e-6)


def test_threads_are_onnx_runtimes():
    load_colorizer("regression", select_backend("onnxruntime"))
    lite = ort_pipeline.load("regression", "onnxruntime", None, None, {})
    lite.set_threads(1)
    assert lite.get_threads() == 1 and lite.session.get_session_options().intra_op_num_threads == 1


def test_what_stays_on_pytorchs_path():
    load_colorizer("regression", select_backend("onnxruntime"))  # the export is cached from here on
    assert ort_pipeline.load("regression", "onnxruntime", None, None, {}) is not None
    assert ort_pipeline.load("regression", "cpu", None, None, {}) is None  # PyTorch asked for
    load_colorizer("classification", select_backend("onnxruntime"))
    assert ort_pipeline.load("classification", "onnxruntime", None, None, {"method": "argmax"}) is None
    assert ort_pipeline.load("classification", "onnxruntime", None, None, {"temperature": 0.0}) is None
    assert ort_pipeline.load("regression", "onnxruntime", None, None, {"temperature": 0.3}) is None


def test_a_damaged_export_falls_back_and_is_written_again():
    sha = file_sha256(get_spec("regression").weights_path())
    load_colorizer("regression", select_backend("onnxruntime"))
    graph, sidecar = bundle.paths(sha)
    graph.write_bytes(b"not an onnx graph")
    assert ort_pipeline.load("regression", "onnxruntime", None, None, {}) is None
    assert not sidecar.exists()  # dropped, so that PyTorch's next run exports again
    load_colorizer("regression", select_backend("onnxruntime"))
    assert ort_pipeline.load("regression", "onnxruntime", None, None, {}) is not None
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "version": bundle.VERSION + 1}))
    assert bundle.read(sha) is None


def _gray_clip(path: Path, frames: int = 12) -> Path:
    import av

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            gray = np.repeat(np.roll(base, i, axis=1)[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(gray, format="rgb24").reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize("kind", ["photo", "film"])
def test_a_run_imports_no_torch(tmp_path, kind):
    """The whole command, after a first run that leaves the export: the photo or film coloured, torch
    never loaded, the output the first run's."""
    src = EXAMPLE if kind == "photo" else _gray_clip(tmp_path / "gray.mp4")
    suffix = ".png" if kind == "photo" else ".mp4"
    env = {**os.environ, "COLORIZE_CACHE_DIR": str(tmp_path / "cache")}
    first = [
        sys.executable,
        "-m",
        "colorcli",
        str(src),
        "-o",
        str(tmp_path / f"first{suffix}"),
        "--backend",
        "onnxruntime",
    ]
    subprocess.run(first, check=True, env=env, cwd=ROOT, capture_output=True)
    marker = tmp_path / "torch-imported"
    code = (
        "import atexit, sys; "
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write(str('torch' in sys.modules))); "
        "from colorcli.app import main; main()"
    )
    second = [str(src), "-o", str(tmp_path / f"second{suffix}"), "--backend", "onnxruntime"]
    subprocess.run([sys.executable, "-c", code, *second], check=True, env=env, cwd=ROOT, capture_output=True)
    assert marker.read_text() == "False"
    if kind == "photo":
        import cv2

        a, b = (cv2.imread(str(tmp_path / n)).astype(int) for n in ("first.png", "second.png"))
        assert np.abs(a - b).max() <= 1
    else:  # the first run was PyTorch's pipeline on ONNX Runtime: within a level or two, frame by frame
        from engines.evaluation.scoring import video_frames

        a, b = (np.stack(list(video_frames(tmp_path / n))).astype(int) for n in ("first.mp4", "second.mp4"))
        assert a.shape == b.shape == (12, 48, 64, 3) and np.abs(a - b).mean() < 0.5


def test_frame_estimate_reads_the_header(tmp_path):
    from engines.video.streams import frame_estimate

    assert frame_estimate(_gray_clip(tmp_path / "gray.mp4", frames=12)) == 12
    assert frame_estimate(EXAMPLE) <= 1 and frame_estimate(tmp_path / "missing.mp4") == 0


def _run_options(app, backend: str = "auto"):
    return app.RunOptions(
        output=None, model="regression", backend=backend, recursive=False, overwrite=False, json_out=False,
        quality=95, working_size=None, weights=None, verbose=False,
    )  # fmt: skip


def test_auto_keeps_pytorch_for_long_runs_on_a_cpu_with_bf16(tmp_path, monkeypatch):
    """On a bf16 CPU a run past ``_BF16_LONG_RUN`` photos and film frames goes to PyTorch (its network is
    the faster there); a short one, any run on other CPUs and ``--backend onnxruntime`` do not."""
    from colorcli import app
    from engines.runtime import host

    load_colorizer("regression", select_backend("onnxruntime"))  # the export is cached from here on
    clip = _gray_clip(tmp_path / "gray.mp4", frames=12)
    opts = _run_options(app)
    short = [Job(str(EXAMPLE), str(tmp_path / "a.png")), Job(str(clip), str(tmp_path / "b.mp4"))]
    assert app._run_size(short) == 13
    monkeypatch.setattr(app, "_BF16_LONG_RUN", 10)
    monkeypatch.setattr(host, "cpu_has_fast_bf16", lambda: True)
    colorizer, why = app._torch_free_colorizer(short, opts)
    assert colorizer is None and "long run" in why
    assert app._torch_free_colorizer(short[:1], opts)[0] is not None
    explicit = _run_options(app, backend="onnxruntime")
    assert app._torch_free_colorizer(short, explicit)[0] is not None
    monkeypatch.setattr(host, "cpu_has_fast_bf16", lambda: False)
    assert app._torch_free_colorizer(short, opts)[0] is not None
