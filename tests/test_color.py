"""Tests for engines.color against scikit-image (an independent implementation) and by properties.

Tensors follow the module's convention: channels on dim -3, ``(..., 3, H, W)``. scikit-image puts
channels last, so the helpers below move the axis.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage import color as skcolor

from engines import color as C

DTYPES = [torch.float32, torch.float64]
HYP = settings(max_examples=40, deadline=None)

# Edge colours: black, white, primaries, secondaries, grays (including both sides of the sRGB
# linear/power switch at 0.04045 and a near-black gray in the Lab linear segment).
EDGE_RGB = np.array(
    [
        [0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 0.0],
        [0.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.5, 0.5, 0.5],
        [0.18, 0.18, 0.18],
        [0.04045, 0.04045, 0.04045],
        [0.04, 0.04, 0.04],
        [0.001, 0.001, 0.001],
        [0.9, 0.1, 0.4],
    ]
)


def to_hwc(t: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) tensor -> (..., H, W, 3) float64 array."""
    return np.moveaxis(t.detach().double().numpy(), -3, -1)


def from_hwc(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """(..., H, W, 3) array -> (..., 3, H, W) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a, dtype=np.float64), -1, -3))).to(dtype)


def edge_image(dtype: torch.dtype) -> torch.Tensor:
    """The edge colours as a (3, 2, 7) image."""
    return from_hwc(EDGE_RGB.reshape(2, 7, 3), dtype)


def random_rgb(shape, dtype, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    # Cube half of the values so that dark colours (both linear segments) are well represented.
    x = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, x**3, x)
    return x.to(dtype)


def sk_lab(rgb: torch.Tensor) -> np.ndarray:
    return skcolor.rgb2lab(to_hwc(rgb), illuminant="D65", observer="2")


def sk_rgb_from_lab(lab: np.ndarray) -> np.ndarray:
    return skcolor.lab2rgb(lab, illuminant="D65", observer="2")


# Shapes for property tests: unbatched (3, H, W) or batched (N, 3, H, W).
image_shapes = st.one_of(
    st.tuples(st.just(3), st.integers(1, 5), st.integers(1, 5)),
    st.tuples(st.integers(1, 3), st.just(3), st.integers(1, 5), st.integers(1, 5)),
)


def unit_arrays(shape):
    return hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1.0, allow_nan=False))


# --------------------------------------------------------------------------------------------
# Reference comparisons (scikit-image)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 17, 19), (2, 3, 11, 13)])
def test_rgb_to_lab_matches_skimage_random(dtype, shape):
    rgb = random_rgb(shape, dtype)
    lab = C.rgb_to_lab(rgb)
    assert lab.shape == rgb.shape and lab.dtype == dtype
    np.testing.assert_allclose(to_hwc(lab), sk_lab(rgb), rtol=0, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rgb_to_lab_matches_skimage_edges(dtype):
    rgb = edge_image(dtype)
    np.testing.assert_allclose(to_hwc(C.rgb_to_lab(rgb)), sk_lab(rgb), rtol=0, atol=1e-3)


def test_rgb_to_lab_known_values():
    # Hand-known anchors: black is L=0, white is L=100, sRGB red is about (53.24, 80.09, 67.20).
    lab = C.rgb_to_lab(edge_image(torch.float64))
    px = to_hwc(lab).reshape(-1, 3)
    np.testing.assert_allclose(px[0], [0.0, 0.0, 0.0], atol=1e-9)
    assert px[1][0] == pytest.approx(100.0, abs=1e-6)
    np.testing.assert_allclose(px[2], [53.24, 80.09, 67.20], atol=0.01)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 17, 19), (2, 3, 11, 13)])
def test_lab_to_rgb_matches_skimage_in_gamut(dtype, shape):
    rgb = random_rgb(shape, torch.float64, seed=1)
    lab_np = sk_lab(rgb)  # in gamut by construction
    out = C.lab_to_rgb(from_hwc(lab_np, dtype))
    assert out.shape == rgb.shape and out.dtype == dtype
    # skimage clips to [0, 1]; clip ours too (values are within rounding of [0, 1]).
    np.testing.assert_allclose(to_hwc(out.clamp(0, 1)), sk_rgb_from_lab(lab_np), rtol=0, atol=1e-4)
    np.testing.assert_allclose(to_hwc(out), to_hwc(rgb), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lab_to_rgb_matches_skimage_edges(dtype):
    lab_np = sk_lab(edge_image(torch.float64))
    out = C.lab_to_rgb(from_hwc(lab_np, dtype))
    np.testing.assert_allclose(to_hwc(out.clamp(0, 1)), sk_rgb_from_lab(lab_np), rtol=0, atol=1e-4)


def test_lab_to_rgb_out_of_gamut_matches_skimage_after_clipping():
    g = torch.Generator().manual_seed(2)
    l = torch.rand(1, 40, 40, generator=g, dtype=torch.float64) * 100
    ab = (torch.rand(2, 40, 40, generator=g, dtype=torch.float64) * 2 - 1) * 128
    lab = torch.cat((l, ab), 0)
    out = C.lab_to_rgb(lab)
    # Not clipped: a good share of these colours fall outside [0, 1].
    assert ((out < -0.01) | (out > 1.01)).any(0).float().mean() > 0.3
    # skimage clips negative Z (and warns); compare only where it does not.
    fz = (l[0] + 16) / 116 - ab[1] / 200
    mask = (fz > 0.25).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # skimage: "negative Z values ... clipped"
        ref = sk_rgb_from_lab(to_hwc(lab))
    np.testing.assert_allclose(to_hwc(out.clamp(0, 1))[mask], ref[mask], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 9, 7), (4, 3, 5, 6)])
def test_yuv_matches_skimage(dtype, shape):
    rgb = random_rgb(shape, dtype, seed=3)
    yuv = C.rgb_to_yuv(rgb)
    assert yuv.shape == rgb.shape and yuv.dtype == dtype
    np.testing.assert_allclose(to_hwc(yuv), skcolor.rgb2yuv(to_hwc(rgb)), rtol=0, atol=1e-5)
    yuv_np = skcolor.rgb2yuv(to_hwc(rgb))
    np.testing.assert_allclose(
        to_hwc(C.yuv_to_rgb(from_hwc(yuv_np, dtype))), skcolor.yuv2rgb(yuv_np), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_yuv_edges_match_skimage_and_ranges(dtype):
    rgb = edge_image(dtype)
    yuv = C.rgb_to_yuv(rgb)
    np.testing.assert_allclose(to_hwc(yuv), skcolor.rgb2yuv(to_hwc(rgb)), rtol=0, atol=1e-5)
    y, u, v = to_hwc(yuv).reshape(-1, 3).T
    # Documented ranges: Y in [0, 1], |U| <= 0.436, |V| <= 0.615; grays have U = V = 0.
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    assert np.abs(u).max() <= 0.436 + 1e-4 and np.abs(v).max() <= 0.615 + 1e-4
    assert np.abs(u).max() > 0.43 and np.abs(v).max() > 0.6  # the extremes are reached (blue, red)
    gray = EDGE_RGB[:, 0] == EDGE_RGB[:, 1]
    gray &= EDGE_RGB[:, 1] == EDGE_RGB[:, 2]
    np.testing.assert_allclose(u[gray], 0, atol=1e-6)
    np.testing.assert_allclose(v[gray], 0, atol=1e-6)


def test_yuv_to_rgb_not_clipped():
    yuv = torch.tensor([1.0, 0.4, 0.6], dtype=torch.float64).view(3, 1, 1)
    out = C.yuv_to_rgb(yuv)
    assert out.max() > 1.5
    np.testing.assert_allclose(to_hwc(out), skcolor.yuv2rgb(to_hwc(yuv)), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Round trips and shapes
# --------------------------------------------------------------------------------------------


# (forward, inverse, float32 tolerance, float64 tolerance). Lab's float64 tolerance is 1e-7, not
# tighter, because the standard sRGB thresholds are not exact inverses (0.04045 / 12.92 = 0.00313080 >
# 0.0031308): 0.04045 comes back as 0.04044997.
RGB_ROUND_TRIPS = {
    "lab": (C.rgb_to_lab, C.lab_to_rgb, 1e-4, 1e-7),
    "yuv": (C.rgb_to_yuv, C.yuv_to_rgb, 1e-5, 1e-12),
}


@pytest.mark.parametrize("space", RGB_ROUND_TRIPS)
@HYP
@given(data=st.data(), shape=image_shapes, dtype=st.sampled_from(DTYPES))
def test_rgb_round_trip(space, data, shape, dtype):
    forward, inverse, tol32, tol64 = RGB_ROUND_TRIPS[space]
    rgb = torch.from_numpy(data.draw(unit_arrays(shape))).to(dtype)
    back = inverse(forward(rgb))
    assert back.shape == rgb.shape and back.dtype == dtype
    torch.testing.assert_close(back, rgb, rtol=0, atol=tol32 if dtype == torch.float32 else tol64)


@HYP
@given(data=st.data(), shape=image_shapes)
def test_lab_rgb_lab_round_trip_out_of_gamut(data, shape):
    # lab_to_rgb does not clip, so any Lab colour survives lab -> rgb -> lab.
    l = data.draw(hnp.arrays(np.float64, (*shape[:-3], 1, *shape[-2:]), elements=st.floats(0, 100)))
    ab = data.draw(hnp.arrays(np.float64, (*shape[:-3], 2, *shape[-2:]), elements=st.floats(-128, 128)))
    lab = torch.from_numpy(np.concatenate((l, ab), axis=-3))
    back = C.rgb_to_lab(C.lab_to_rgb(lab))
    torch.testing.assert_close(back, lab, rtol=0, atol=1e-6)


@HYP
@given(data=st.data(), shape=image_shapes, dtype=st.sampled_from(DTYPES))
def test_srgb_linear_round_trip(data, shape, dtype):
    rgb = torch.from_numpy(data.draw(unit_arrays(shape))).to(dtype)
    lin = C.srgb_to_linear(rgb)
    assert lin.shape == rgb.shape and lin.dtype == dtype
    assert lin.min() >= 0 and lin.max() <= 1 + 1e-6
    tol = 1e-6 if dtype == torch.float32 else 1e-7  # 1e-7: see RGB_ROUND_TRIPS
    torch.testing.assert_close(C.linear_to_srgb(lin), rgb, rtol=0, atol=tol)
    torch.testing.assert_close(C.srgb_to_linear(C.linear_to_srgb(rgb)), rgb, rtol=0, atol=tol)


def test_srgb_transfer_reference_values():
    x = torch.tensor([0.0, 0.02, 0.04045, 0.5, 1.0], dtype=torch.float64)
    ref = np.where(x.numpy() <= 0.04045, x.numpy() / 12.92, ((x.numpy() + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(C.srgb_to_linear(x).numpy(), ref, rtol=1e-12, atol=0)
    assert C.srgb_to_linear(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(0.214041, abs=1e-6)
    # Continuous and increasing across the segment switch.
    dense = torch.linspace(0, 1, 20001, dtype=torch.float64)
    assert (C.srgb_to_linear(dense).diff() > 0).all()
    assert (C.linear_to_srgb(dense).diff() > 0).all()
    # linear_to_srgb is not clipped above 1.
    assert C.linear_to_srgb(torch.tensor(2.0, dtype=torch.float64)) > 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_equals_per_image(dtype):
    rgb = random_rgb((3, 3, 6, 5), dtype, seed=4)
    tol = 1e-4 if dtype == torch.float32 else 1e-10  # float32 einsum sums in a different order
    for fn in (C.rgb_to_lab, C.rgb_to_yuv, C.rgb_to_lightness, C.srgb_to_linear):
        batched = fn(rgb)
        for i in range(rgb.shape[0]):
            torch.testing.assert_close(batched[i], fn(rgb[i]), rtol=0, atol=tol)
    lab = C.rgb_to_lab(rgb)
    for fn in (C.lab_to_rgb, C.yuv_to_rgb):
        batched = fn(lab)
        for i in range(rgb.shape[0]):
            torch.testing.assert_close(batched[i], fn(lab[i]), rtol=0, atol=tol)
    # Extra leading dims (..., 3, H, W) work too.
    deep = rgb.view(1, 3, 3, 6, 5).expand(2, 3, 3, 6, 5)
    torch.testing.assert_close(C.rgb_to_lab(deep)[1], lab, rtol=0, atol=tol)


# --------------------------------------------------------------------------------------------
# Lightness, grays, normalisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 8, 9), (2, 3, 4, 5)])
def test_rgb_to_lightness_equals_lab_l(dtype, shape):
    # Random colours plus the edge colours, as (..., 3, 1, W).
    edges = edge_image(dtype).flatten(-2).expand(*shape[:-2], -1)
    rgb = torch.cat((random_rgb(shape, dtype, seed=5).flatten(-2), edges), -1).unsqueeze(-2)
    l = C.rgb_to_lightness(rgb)
    assert l.shape == (*rgb.shape[:-3], 1, *rgb.shape[-2:]) and l.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(l, C.rgb_to_lab(rgb)[..., :1, :, :], rtol=0, atol=tol)
    np.testing.assert_allclose(l[..., 0, :, :].double().numpy(), sk_lab(rgb)[..., 0], rtol=0, atol=1e-3)
    assert l.min() >= 0 and l.max() <= 100 + 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_gray_has_tiny_ab_like_skimage(dtype):
    # scikit-image's sRGB->XYZ matrix rows sum to (0.950456, 1, 1.088754), not exactly the D65 white
    # (0.95047, 1, 1.08883), so a neutral gray gets |ab| up to about 0.005 (at white). This bound
    # holds for skimage and must hold for us.
    levels = torch.linspace(0, 1, 101, dtype=dtype)
    rgb = levels.view(1, 1, -1).expand(3, 1, -1)
    ab = C.rgb_to_lab(rgb)[1:]
    assert ab.abs().max() < 6e-3
    np.testing.assert_allclose(to_hwc(C.rgb_to_lab(rgb)), sk_lab(rgb), atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 5, 7), (2, 1, 3, 4)])
def test_lightness_to_rgb_gray(dtype, shape):
    g = torch.Generator().manual_seed(7)
    l = (torch.rand(shape, generator=g, dtype=torch.float64) * 100).to(dtype)
    l.view(-1)[:2] = torch.tensor([0.0, 100.0], dtype=dtype)
    rgb = C.lightness_to_rgb_gray(l)
    assert rgb.shape == (*shape[:-3], 3, *shape[-2:]) and rgb.dtype == dtype
    r, gg, b = rgb.unbind(-3)
    torch.testing.assert_close(r, gg, rtol=0, atol=1e-4)
    torch.testing.assert_close(gg, b, rtol=0, atol=1e-4)
    assert rgb.min() >= -1e-6 and rgb.max() <= 1 + 1e-4
    # Its lightness is the requested one.
    torch.testing.assert_close(C.rgb_to_lightness(rgb), l, rtol=0, atol=1e-3)


def test_lightness_to_rgb_gray_known_values():
    l = torch.tensor([0.0, 50.0, 100.0], dtype=torch.float64).view(1, 1, 3)
    rgb = C.lightness_to_rgb_gray(l)[:, 0].T.numpy()
    np.testing.assert_allclose(rgb[0], 0.0, atol=1e-9)
    np.testing.assert_allclose(rgb[2], 1.0, atol=1e-4)
    # L = 50 is Y = ((50 + 16) / 116)^3 = 0.18419; sRGB-encoded that is 0.46636.
    np.testing.assert_allclose(rgb[1], 0.46636, atol=1e-4)


def test_normalize_l():
    l = torch.tensor([0.0, 50.0, 100.0, 25.0])
    torch.testing.assert_close(C.normalize_l(l), torch.tensor([-1.0, 0.0, 1.0, -0.5]))
    l64 = l.double()
    assert C.normalize_l(l64).dtype == torch.float64


def test_normalize_denormalize_ab():
    ab = torch.tensor([-110.0, 0.0, 55.0, 110.0], dtype=torch.float64)
    torch.testing.assert_close(C.normalize_ab(ab), torch.tensor([-1.0, 0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(C.denormalize_ab(C.normalize_ab(ab)), ab)


# --------------------------------------------------------------------------------------------
# lab_to_rgb_keep_lightness
# --------------------------------------------------------------------------------------------


def _wide_lab(shape_l, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    n = shape_l[:-3]
    l = (torch.rand(shape_l, generator=g, dtype=torch.float64) * 100).to(dtype)
    ab = ((torch.rand((*n, 2, *shape_l[-2:]), generator=g, dtype=torch.float64) * 2 - 1) * 128).to(dtype)
    return l, ab


def _hue_diff(h1, h2):
    return torch.remainder(h1 - h2 + math.pi, 2 * math.pi) - math.pi


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_l", [(2, 1, 24, 24), (1, 30, 20)])
def test_keep_lightness_properties(dtype, shape_l):
    l, ab = _wide_lab(shape_l, dtype, seed=8)
    out = C.lab_to_rgb_keep_lightness(l, ab)
    assert out.shape == (*shape_l[:-3], 3, *shape_l[-2:]) and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1

    raw = C.lab_to_rgb(torch.cat((l, ab), dim=-3))
    strictly_in = ((raw >= 0) & (raw <= 1)).all(dim=-3, keepdim=True)
    out_of = ((raw < -0.01) | (raw > 1.01)).any(dim=-3, keepdim=True)
    assert out_of.float().mean() > 0.5  # the test really exercises the gamut mapping
    assert strictly_in.sum() > 20

    # Lightness kept: within 0.5 on average, 2 at worst.
    lab_out = C.rgb_to_lab(out)
    dl = (lab_out[..., :1, :, :] - l).abs()
    assert dl.mean() < 0.5
    assert dl.max() < 2.0
    # The docstring promises more: L is kept "up to rounding" (here: the final clip of RGB values
    # that the gamut test lets exceed [0, 1] by a hair).
    assert dl.mean() < 0.02
    assert dl.max() < 0.3

    # In-gamut pixels unchanged.
    diff = (out - raw).abs().amax(dim=-3, keepdim=True)
    assert diff[strictly_in].max() < 1e-5

    # Out-of-gamut pixels: chroma reduced, and hue kept where chroma remains > 5.
    c_in = ab.norm(dim=-3, keepdim=True)
    c_out = lab_out[..., 1:, :, :].norm(dim=-3, keepdim=True)
    assert (c_out[out_of] < c_in[out_of]).all()
    keep = out_of & (c_out > 5)
    assert keep.sum() > 100
    h_in = torch.atan2(ab[..., 1:, :, :], ab[..., :1, :, :])
    h_out = torch.atan2(lab_out[..., 2:, :, :], lab_out[..., 1:2, :, :])
    dh = _hue_diff(h_out, h_in)[keep].abs()
    assert dh.max() < 0.05
    assert dh.mean() < 5e-3


def test_keep_lightness_is_nearly_maximal():
    # Chroma is shrunk only as much as needed: a bit more chroma on the same ray leaves the gamut.
    l, ab = _wide_lab((1, 32, 32), torch.float64, seed=9)
    out = C.lab_to_rgb_keep_lightness(l, ab)
    raw = C.lab_to_rgb(torch.cat((l, ab), 0))
    out_of = ((raw < -0.01) | (raw > 1.01)).any(0, keepdim=True)
    ratio = C.rgb_to_lab(out)[1:].norm(dim=0, keepdim=True) / ab.norm(dim=0, keepdim=True)
    bigger = C.lab_to_rgb(torch.cat((l, ab * (ratio + 0.05).clamp(max=1)), 0))
    leaves = ((bigger < -1e-3) | (bigger > 1 + 1e-3)).any(0, keepdim=True)
    assert leaves[out_of].float().mean() > 0.97


@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_lightness_in_gamut_only_equals_lab_to_rgb(dtype):
    rgb = random_rgb((2, 3, 10, 10), torch.float64, seed=10).clamp(0.02, 0.98)
    lab = C.rgb_to_lab(rgb).to(dtype)
    out = C.lab_to_rgb_keep_lightness(lab[:, :1], lab[:, 1:])
    # Against the float64 conversion: two float32 computations can each be a few 1e-6 off where the
    # matrix cancels (a dark channel of a bright colour).
    atol = 5e-6 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(out.double(), C.lab_to_rgb(lab.double()), rtol=0, atol=atol)
    torch.testing.assert_close(out, rgb.to(dtype), rtol=0, atol=1e-4)


def test_keep_lightness_batched_equals_per_image():
    l, ab = _wide_lab((3, 1, 8, 8), torch.float64, seed=11)
    batched = C.lab_to_rgb_keep_lightness(l, ab)
    for i in range(3):
        torch.testing.assert_close(batched[i], C.lab_to_rgb_keep_lightness(l[i], ab[i]), rtol=0, atol=1e-12)


def test_keep_lightness_zero_ab_is_gray():
    l = torch.linspace(0, 100, 11, dtype=torch.float64).view(1, 1, 11)
    out = C.lab_to_rgb_keep_lightness(l, torch.zeros(2, 1, 11, dtype=torch.float64))
    torch.testing.assert_close(out, C.lightness_to_rgb_gray(l).clamp(0, 1), rtol=0, atol=1e-9)


def _slow_keep_lightness(l: torch.Tensor, ab: torch.Tensor, steps: int = 6, tol: float = 1e-3) -> torch.Tensor:
    """The documented behaviour written plainly, as the reference for the fast path: ``lab_to_rgb``, and
    for pixels with an sRGB value outside [-tol, 1 + tol] a bisection on their chroma scale, in sRGB."""

    def inside(scale):
        rgb = C.lab_to_rgb(torch.cat((l, ab * scale), dim=-3))
        return ((rgb >= -tol) & (rgb <= 1 + tol)).all(dim=-3, keepdim=True)

    lo = inside(1.0).to(l.dtype)  # 1 where already in gamut: the bisection below then leaves it there
    hi = torch.ones_like(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = inside(mid)
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return C.lab_to_rgb(torch.cat((l, ab * lo), dim=-3)).clamp(0, 1)


def _edge_lab(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Every combination of edge lightnesses (0, the CIE linear segment below 8, 100) and chromas (0, small,
    far outside the gamut, both signs), as ``(1, 1, K)`` and ``(2, 1, K)``."""
    ls = torch.tensor([0.0, 0.5, 7.9, 8.0, 8.1, 50.0, 99.9, 100.0], dtype=torch.float64)
    cs = torch.tensor([0.0, 1.0, -1.0, 50.0, -50.0, 128.0, -128.0, 300.0, -300.0], dtype=torch.float64)
    grid = torch.cartesian_prod(ls, cs, cs).T
    return grid[:1, None, :].to(dtype), grid[1:, None, :].to(dtype)


def test_keep_lightness_matches_the_slow_reference_in_float64():
    for l, ab in (_wide_lab((2, 1, 40, 40), torch.float64, seed=12), _edge_lab(torch.float64)):
        raw = C.lab_to_rgb(torch.cat((l, ab), dim=-3))
        assert ((raw < -0.01) | (raw > 1.01)).any(dim=-3).float().mean() > 0.3  # the gamut mapping is exercised
        torch.testing.assert_close(C.lab_to_rgb_keep_lightness(l, ab), _slow_keep_lightness(l, ab), rtol=0, atol=1e-9)


def test_keep_lightness_float32_matches_the_slow_reference():
    l, ab = _wide_lab((2, 1, 40, 40), torch.float32, seed=13)
    diff = (C.lab_to_rgb_keep_lightness(l, ab).double() - _slow_keep_lightness(l.double(), ab.double())).abs()
    # float32 rounding; and rarely a bisection step decided the other way for a pixel right at a boundary.
    assert (diff > 1e-5).any(dim=-3).double().mean() < 2e-3
    assert diff.max() < 0.1


def _u8_reference(lin: torch.Tensor) -> torch.Tensor:
    return (C.linear_to_srgb(lin.double().clamp(0, 1)) * 255).round()


def test_linear_to_srgb_u8_table_is_exact():
    # Dense values over and beyond [0, 1], and every level boundary with its float32 neighbours, where a
    # table would most easily be off by one.
    dense = torch.linspace(-0.01, 1.01, 300_001, dtype=torch.float64).float()
    bounds = C.srgb_to_linear((torch.arange(1, 256, dtype=torch.float64) - 0.5) / 255).float()
    near = torch.cat([bounds, torch.nextafter(bounds, torch.tensor(2.0)), torch.nextafter(bounds, torch.tensor(-1.0))])
    edges = torch.tensor([-1.0, -1e-6, 0.0, 1e-9, 1.0, 1.0 + 1e-6, 5.0])
    for values in (dense, near, edges):
        n = values.numel() // 3 * 3
        lin = values[:n].view(3, 1, -1)
        got = C._linear_to_srgb_u8(lin)
        assert got.dtype == torch.uint8 and got.shape == lin.shape
        assert torch.equal(got.double(), _u8_reference(lin))


def test_linear_to_srgb_u8_batched_and_channels_last():
    lin = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(14)) * 1.2 - 0.1
    got = C._linear_to_srgb_u8(lin)
    assert got.shape == (2, 3, 5, 7) and got.movedim(1, -1).is_contiguous()  # (N, H, W, 3) for free
    assert torch.equal(got.double(), _u8_reference(lin))


@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_lightness_u8_is_the_float_path_rounded(dtype):
    for l, ab in (_wide_lab((2, 1, 32, 32), dtype, seed=15), _edge_lab(dtype)):
        got = C._lab_to_rgb_u8_keep_lightness(l, ab)
        assert got.dtype == torch.uint8 and got.shape == (*l.shape[:-3], 3, *l.shape[-2:])
        diff = (got.double() - (C.lab_to_rgb_keep_lightness(l, ab).double() * 255).round()).abs()
        assert diff.max() <= 1  # the same gamut mapping; only a value within rounding of a level boundary differs
        assert (diff > 0).double().mean() < 1e-3
        # And against the slow reference, up to those rare boundary cases.
        slow = (_slow_keep_lightness(l.double(), ab.double()) * 255).round()
        assert ((got.double() - slow).abs() > 1).double().mean() < 2e-3


def test_rgb_u8_to_lightness_matches_the_float_path():
    g = torch.Generator().manual_seed(11)
    rgb_u8 = torch.randint(0, 256, (2, 3, 17, 23), generator=g, dtype=torch.uint8)
    fast = C.rgb_u8_to_lightness(rgb_u8)
    ref = C.rgb_to_lightness(rgb_u8.double() / 255)
    assert fast.dtype == torch.float32 and fast.shape == (2, 1, 17, 23)
    torch.testing.assert_close(fast.double(), ref, rtol=0, atol=2e-4)


def test_rgb_u8_to_lightness_gray_shortcut_matches_the_formula():
    levels = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, 16, 16)
    torch.testing.assert_close(
        C.rgb_u8_to_lightness(levels).double(), C.rgb_to_lightness(levels.double() / 255), rtol=0, atol=2e-4
    )


@pytest.mark.parametrize("space", C.COLOR_SPACES)
def test_chroma_spaces_see_gray_pictures_as_in_training(space):
    # A gray picture's network input is the same whether taken from RGB (training) or from L (inference).
    gray = torch.rand(2, 1, 8, 8).expand(2, 3, 8, 8)
    l_in, chroma = C.split_chroma(gray, space)
    torch.testing.assert_close(C.input_from_lightness(C.rgb_to_lightness(gray), space), l_in, atol=2e-5, rtol=0)
    assert chroma.abs().max() < 1e-2  # ab of gray is ~5e-3, as in scikit-image
    assert C.chroma_to_ab(C.rgb_to_lightness(gray), chroma, space).abs().max() < 1e-2


def test_yuv_chroma_reexpressed_as_ab_keeps_hue_and_range():
    rgb = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    l = C.rgb_to_lightness(rgb)
    _, uv = C.split_chroma(rgb, "yuv")
    assert uv.abs().max() <= C.AB_SCALE + 1e-3  # ab-like units, so the shared 22x22 bin grid covers them
    ab = C.chroma_to_ab(l, uv, "yuv")
    ab_true = C.rgb_to_lab(rgb)[:, 1:]
    # Y of the gray of the same L is not the colour's luma, so this is close rather than exact: same hue.
    cos = (ab * ab_true).sum(1) / (ab.norm(dim=1) * ab_true.norm(dim=1) + 1e-6)
    assert cos[ab_true.norm(dim=1) > 20].mean() > 0.9


def test_rgb_u8_hwc_to_lightness_matches_the_float_path_and_the_torch_one():
    rng = np.random.default_rng(21)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgb[0, :, :] = np.arange(53, dtype=np.uint8)[:, None] * 4  # dark grays: the CIE linear segment
    got = C.rgb_u8_hwc_to_lightness(rgb)
    assert got.dtype == np.float32 and got.shape == (37, 53)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    exact = C.rgb_to_lightness(chw.double() / 255)[0].numpy()
    assert np.abs(got - exact).max() < 5e-5
    assert np.abs(got - C.rgb_u8_to_lightness(chw)[0].numpy()).max() < 1e-4  # the path it replaces


@pytest.mark.parametrize("shape", [(1, 1), (4, 1), (1, 4), (2, 3), (5, 1)])
def test_rgb_u8_hwc_to_lightness_and_back_at_tiny_sizes(shape):
    # OpenCV takes arrays of up to 4 values in one column for scalars: photos can be that small.
    rgb = np.random.default_rng(24).integers(0, 256, (*shape, 3), dtype=np.uint8)
    l = C.rgb_u8_hwc_to_lightness(rgb)
    assert l.shape == shape and l.dtype == np.float32
    exact = C.rgb_to_lightness(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255)[0].numpy()
    assert np.abs(l - exact).max() < 5e-5
    ab = np.full((*shape, 2), 20, np.float32)
    got = C.lab_hwc_to_rgb_u8_keep_lightness(l, ab)
    ref = C.lab_to_rgb_keep_lightness(
        torch.from_numpy(l)[None].double(), torch.from_numpy(ab).permute(2, 0, 1).double()
    )
    assert got.shape == (*shape, 3) and np.abs(got - np.rint(ref.permute(1, 2, 0).numpy() * 255)).max() <= 1


def test_lab_hwc_to_rgb_u8_is_the_exact_path_in_8_bits():
    wide_l, wide_ab = _wide_lab((1, 48, 64), torch.float32, seed=22)  # (1, H, W), (2, H, W)
    edge_l, edge_ab = _edge_lab(torch.float32)  # (1, 1, K), (2, 1, K)
    for l, ab in ((wide_l, wide_ab), (edge_l, edge_ab)):
        got = C.lab_hwc_to_rgb_u8_keep_lightness(l[0].numpy(), ab.permute(1, 2, 0).numpy())
        exact = (C.lab_to_rgb_keep_lightness(l.double(), ab.double()) * 255).round().permute(1, 2, 0).numpy()
        assert got.dtype == np.uint8 and got.shape == exact.shape
        diff = np.abs(got.astype(np.float64) - exact)
        assert diff.max() <= 1  # the same gamut mapping; only a value within float rounding of a level boundary differs
        assert (diff > 0).mean() < 2e-3


def test_the_films_gamut_bisection_is_the_torch_one():
    # The 8-bit film path maps its few out-of-gamut pixels in NumPy; the reference is the torch bisection.
    rng = np.random.default_rng(24)
    l = (rng.random(20000) * 100).astype(np.float32)
    ab = rng.normal(0, 60, (20000, 2)).astype(np.float32)  # most of them out of gamut
    ref = C._shrink_into_gamut(torch.from_numpy(l)[None, None], torch.from_numpy(ab.T.copy())[:, None], 6)
    ref = ref[:, 0, :].T.numpy()
    got = C._shrink_into_gamut_np(l, ab, 6)
    assert got.shape == (20000, 3) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-5  # no trial of this sample lies within rounding of the edge
    levels = C._linear_to_srgb_u8_np(got)
    expected = C._linear_to_srgb_u8(torch.from_numpy(ref.T.copy())[:, None])[:, 0, :].T.numpy()
    assert levels.dtype == np.uint8 and (levels != expected).mean() < 1e-4


def test_lab_hwc_to_rgb_u8_over_bands_with_gamut_edges():
    # Several bands of rows, the last one partial; out-of-gamut pixels in one middle band and in the last
    # only (the other bands skip the per-pixel gamut test); and the gamut's corners, whose linear values
    # land a float rounding outside [0, 1] (inside the test's tolerance): they must still give 0 and 255.
    w = 300
    rows = C._CACHE_BAND_VALUES // (3 * w)
    h = 3 * rows + rows // 2
    rgb = random_rgb((3, h, w), torch.float64, seed=23).clamp(0.02, 0.98)
    corners = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 1]])
    rgb[:, 0, :8] = corners.T.double()
    lab = C.rgb_to_lab(rgb).float()
    l, ab = lab[:1], lab[1:].clone()
    far = [(rows + 3, 10), (rows + 4, 250), (h - 1, w - 1), (h - 2, 0)]
    for y, x in far:
        ab[:, y, x] = torch.tensor([90.0, -120.0])
    got = C.lab_hwc_to_rgb_u8_keep_lightness(l[0].numpy(), ab.permute(1, 2, 0).numpy())
    exact = (C.lab_to_rgb_keep_lightness(l.double(), ab.double()) * 255).round().permute(1, 2, 0).numpy()
    diff = np.abs(got.astype(np.float64) - exact)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert np.array_equal(got[0, :8], (corners.numpy() * 255).astype(np.uint8))
    for y, x in far:  # mapped into the gamut: the exact path's colour, not a clipped one
        assert np.abs(got[y, x].astype(int) - exact[y, x]).max() <= 1
        raw = C.lab_to_rgb(torch.cat((l, ab)).double()[:, y : y + 1, x : x + 1])
        assert ((raw < -0.01) | (raw > 1.01)).any()  # really out of gamut before the mapping


def test_rgb_u8_hwc_to_lightness_of_black_and_white_is_the_per_level_table():
    """R = G = B (a gray scan saved as RGB, a B&W film frame): L by one lookup per level, equal to the
    formula; a single pixel off gray takes the formula path and still agrees."""
    rng = np.random.default_rng(25)
    gray = np.repeat(rng.integers(0, 256, (29, 41, 1), dtype=np.uint8), 3, axis=2)
    exact = C.rgb_to_lightness(torch.from_numpy(gray).permute(2, 0, 1).double() / 255)[0].numpy()
    got = C.rgb_u8_hwc_to_lightness(gray)
    assert got.dtype == np.float32 and got.shape == (29, 41) and np.abs(got - exact).max() < 5e-5
    almost = gray.copy()
    almost[7, 9, 2] ^= 1
    exact[7, 9] = C.rgb_to_lightness(torch.from_numpy(almost[7:8, 9:10]).permute(2, 0, 1).double() / 255)[0, 0, 0]
    assert np.abs(C.rgb_u8_hwc_to_lightness(almost) - exact).max() < 5e-5


def test_gray_level_of_lightness_is_the_exact_rounding():
    """``color_np.gray_u8_of_lightness``: the 8-bit sRGB level of L's gray, by table, equals rounding the
    gray's exact sRGB value (float64), also at float32 values next to each level's boundary."""
    from engines import color_np

    boundaries = color_np.lightness_of_luminance(color_np.srgb_to_linear((np.arange(1, 256) - 0.5) / 255))
    near = boundaries.astype(np.float32)[:, None] + np.float32([-2e-5, 2e-5])  # either side, off float noise
    l = np.concatenate([np.linspace(0, 100, 50_001, dtype=np.float32), near.ravel(), np.float32([0, 100])])
    y = np.where(l > 8, ((l.astype(np.float64) + 16) / 116) ** 3, l / (24389 / 27))
    srgb = np.where(y <= 0.0031308, 12.92 * y, 1.055 * np.maximum(y, 0.0031308) ** (1 / 2.4) - 0.055)
    expected = np.floor(srgb * 255 + 0.5)
    got = color_np.gray_u8_of_lightness(l)
    assert got.dtype == np.uint8
    clear = np.abs(l[:, None] - boundaries).min(axis=1) > 1e-5  # where float64 rounding cannot decide it
    assert clear.mean() > 0.99 and np.array_equal(got[clear], expected[clear])
    # and agrees with composing L at zero chroma, but for float rounding at a boundary
    composed = color_np.lab_hwc_to_rgb_u8_keep_lightness(l[None, :50_001], np.zeros((1, 50_001, 2), np.float32))[0]
    assert np.abs(composed.astype(int) - got[:50_001, None]).max() <= 1
    assert (composed[:, 1] != got[:50_001]).mean() < 1e-3
