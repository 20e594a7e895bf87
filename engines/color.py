"""Colour conversion and normalisation: the one home for colour math in the project.

Conventions (the same everywhere in the project):
- sRGB is IEC 61966-2-1 (the piecewise transfer function), values in [0, 1], D65 white.
- CIELAB uses the D65 reference white of the CIE 1931 2-degree observer, the same as scikit-image:
  L in [0, 100]; a and b roughly in [-110, 110] for colours inside the sRGB gamut. Like
  scikit-image, the RGB->XYZ matrix's rows do not sum exactly to that white, so a neutral gray has
  |a|, |b| below 0.005 rather than exactly 0; we keep scikit-image's numbers so that our metrics agree
  with independent implementations built on it.
- YUV is analogue BT.601 on gamma-encoded RGB in [0, 1]: Y in [0, 1], U in [-0.436, 0.436],
  V in [-0.615, 0.615] (scikit-image's rgb2yuv).
- Every function works on torch tensors with channels on dim -3 (shape ``(..., 3, H, W)``), so the
  same code serves a training batch ``(N, 3, H, W)`` and one photo ``(3, H, W)``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from engines import color_np

# The constants and the NumPy half (8-bit lightness, composing 8-bit sRGB) live in ``color_np``,
# which imports no torch; they are names of this module too.
from engines.color_np import (  # noqa: F401 - re-exported
    _CACHE_BAND_VALUES,
    _EPS,
    _F_SLOPE,
    _F_SWITCH,
    _KAPPA,
    _LIN_MAX,
    _LIN_MIN,
    _RGB_TO_XYZ,
    _SRGB_U8_BINS,
    WHITE_D65,
    _linear_to_srgb_u8_np,
    _shrink_into_gamut_np,
    gray_u8_lightness_table,
    lab_hwc_to_rgb_u8_keep_lightness,
    rgb_u8_hwc_to_lightness,
)

_RGB_TO_YUV = (
    (0.299, 0.587, 0.114),
    (-0.14714119, -0.28886916, 0.43601035),
    (0.61497538, -0.51496512, -0.10001026),
)

# Model-facing normalisation: L in [0, 100] -> [-1, 1]; ab in about [-110, 110] -> about [-1, 1].
L_CENTER = 50.0
L_SCALE = 50.0
AB_SCALE = 110.0
# YUV chroma scaled so that U and V span about [-1, 1] like normalised ab.
UV_SCALE = 0.615


def _matrix(rows: tuple[tuple[float, ...], ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _apply_matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multiply each pixel's 3-vector by ``m``; ``x`` is ``(..., 3, H, W)``."""
    return torch.einsum("ij,...jhw->...ihw", m, x)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light."""
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    """Linear light -> sRGB encoding. Not clipped: callers clip once, at the very end."""
    return torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], ``(..., 3, H, W)`` -> CIELAB (L in [0, 100], a, b)."""
    xyz = _apply_matrix(_matrix(_RGB_TO_XYZ, rgb), srgb_to_linear(rgb))
    white = torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    t = xyz / white
    f = torch.where(t > _EPS, t.clamp(min=_EPS) ** (1 / 3), (_KAPPA * t + 16) / 116)
    fx, fy, fz = f.unbind(-3)
    return torch.stack((116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)), dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIELAB -> sRGB, not clipped (out-of-gamut colours fall outside [0, 1])."""
    l, a, b = lab.unbind(-3)
    fy = (l + 16) / 116
    f = torch.stack((fy + a / 500, fy, fy - b / 200), dim=-3)
    t = torch.where(f**3 > _EPS, f**3, (116 * f - 16) / _KAPPA)
    white = torch.tensor(WHITE_D65, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    xyz = t * white
    lin = _apply_matrix(torch.linalg.inv(_matrix(_RGB_TO_XYZ, lab)), xyz)
    return linear_to_srgb(lin)


def rgb_to_lightness(rgb: torch.Tensor) -> torch.Tensor:
    """CIELAB L of sRGB in [0, 1]: ``(..., 3, H, W)`` -> ``(..., 1, H, W)``, in [0, 100].

    L depends on the luminance Y only, so this is cheaper than a full ``rgb_to_lab``.
    """
    lin = srgb_to_linear(rgb)
    y = _apply_matrix(_matrix(_RGB_TO_XYZ[1:2], rgb), lin)
    return torch.where(y > _EPS, 116 * y.clamp(min=_EPS) ** (1 / 3) - 16, _KAPPA * y)


def lightness_to_rgb_gray(l: torch.Tensor) -> torch.Tensor:
    """L ``(..., 1, H, W)`` -> the neutral sRGB gray of that lightness, ``(..., 3, H, W)``."""
    return lab_to_rgb(torch.cat((l, torch.zeros_like(l), torch.zeros_like(l)), dim=-3))


def lightness_to_gray_value(l: torch.Tensor) -> torch.Tensor:
    """L -> the sRGB value (in [0, 1]) of the neutral gray of that lightness, elementwise.

    The same as one channel of ``lightness_to_rgb_gray`` without the matrix inverse, so that it
    exports to ONNX inside a network (the ResNet encoder's input).
    """
    fy = (l + 16) / 116
    y = torch.where(fy**3 > _EPS, fy**3, l / _KAPPA)
    return linear_to_srgb(y)


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    """Gamma-encoded RGB in [0, 1] -> analogue BT.601 YUV."""
    return _apply_matrix(_matrix(_RGB_TO_YUV, rgb), rgb)


def yuv_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """Analogue BT.601 YUV -> gamma-encoded RGB, not clipped."""
    return _apply_matrix(torch.linalg.inv(_matrix(_RGB_TO_YUV, yuv)), yuv)


def normalize_l(l: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> ``l_norm`` in [-1, 1] (what every model takes as input)."""
    return (l - L_CENTER) / L_SCALE


def normalize_ab(ab: torch.Tensor) -> torch.Tensor:
    return ab / AB_SCALE


def denormalize_ab(ab_norm: torch.Tensor) -> torch.Tensor:
    return ab_norm * AB_SCALE


# Colour spaces an engine may predict chroma in. Chroma is carried in "ab-like" units (about
# [-110, 110]) in both, so normalisation, ab bins, soft encoding and rebalancing are shared: Lab's ab
# as is; YUV's UV multiplied by UV_TO_AB (V's extreme 0.615 maps to 110, a 10-unit grid holds ~400
# in-gamut UV bins). Everything downstream of an engine (guided upsampling, video smoothing,
# metrics) works in Lab, so a YUV engine's chroma is re-expressed as ab at its working size.
COLOR_SPACES = ("lab", "yuv")
UV_TO_AB = AB_SCALE / UV_SCALE


def split_chroma(rgb: torch.Tensor, space: str) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB ``(N, 3, H, W)`` -> (network input in [-1, 1] ``(N, 1, H, W)``, chroma in ab-like units ``(N, 2, H, W)``)."""
    if space == "lab":
        lab = rgb_to_lab(rgb)
        return normalize_l(lab[:, :1]), lab[:, 1:]
    yuv = rgb_to_yuv(rgb)
    return yuv[:, :1] * 2 - 1, yuv[:, 1:] * UV_TO_AB


def input_from_lightness(l: torch.Tensor, space: str) -> torch.Tensor:
    """The network input for a gray picture of CIELAB lightness ``l`` in [0, 100].

    For a gray pixel BT.601 Y equals the sRGB value, so a YUV engine sees exactly what it saw in training.
    """
    if space == "lab":
        return normalize_l(l)
    return lightness_to_rgb_gray(l)[:, :1] * 2 - 1


def chroma_to_ab(l: torch.Tensor, chroma: torch.Tensor, space: str) -> torch.Tensor:
    """Chroma predicted in ``space`` (ab-like units) on lightness ``l`` -> CIELAB ab."""
    if space == "lab":
        return chroma
    y = lightness_to_rgb_gray(l)[:, :1]
    rgb = yuv_to_rgb(torch.cat((y, chroma / UV_TO_AB), dim=1)).clamp(0, 1)
    return rgb_to_lab(rgb)[:, 1:]


def lab_to_rgb_keep_lightness(l: torch.Tensor, ab: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Combine L ``(..., 1, H, W)`` and ab ``(..., 2, H, W)`` into sRGB in [0, 1], keeping L exact.

    A predicted ab can leave the sRGB gamut; clipping RGB then changes the pixel's lightness. Instead
    the chroma of out-of-gamut pixels is shrunk toward gray (hue and L kept) by bisection on a per-pixel
    scale factor, so the output's lightness is the input's up to rounding. The search runs on those
    pixels only (usually a small fraction of a photo or frame).
    """
    return linear_to_srgb(_keep_lightness_linear(l, ab, steps).clamp_(0, 1)).clamp_(0, 1)


def _lab_to_rgb_u8_keep_lightness(l: torch.Tensor, ab: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """``lab_to_rgb_keep_lightness`` rounded to 8 bits, uint8 ``(..., 3, H, W)``: the video path.

    Equal to ``round(255 * lab_to_rgb_keep_lightness(l, ab))`` except where a value falls within float
    rounding of a level boundary. The sRGB encoding goes through a table (``_srgb_u8_tables``) instead
    of a power per value, which is most of the saving.
    """
    return _linear_to_srgb_u8(_keep_lightness_linear(l, ab, steps))


def _lab_to_linear(l: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """L ``(..., 1, H, W)`` and ab ``(..., 2, H, W)`` -> linear RGB ``(..., 3, H, W)``, not clipped.

    ``srgb_to_linear(lab_to_rgb(lab))`` up to rounding, without its branches and most of its temporaries.
    """
    f = torch.empty((*l.shape[:-3], 3, *l.shape[-2:]), dtype=l.dtype, device=l.device)
    fy = torch.add(l[..., 0, :, :], 16, out=f[..., 1, :, :]).div_(116)
    torch.add(fy, ab[..., 0, :, :], alpha=1 / 500, out=f[..., 0, :, :])
    torch.add(fy, ab[..., 1, :, :], alpha=-1 / 200, out=f[..., 2, :, :])
    # t = f^3 above the switch, the tangent line below it: g^3 + slope * (f - g) with g = max(f, switch).
    g = f.clamp(min=_F_SWITCH)
    d = f.sub_(g)  # before g is cubed in place
    t = g.pow_(3).add_(d, alpha=_F_SLOPE)
    return torch.matmul(_xyz_over_white_to_linear(l.dtype, l.device), t.flatten(-2)).view(t.shape)


@functools.cache
def _xyz_over_white_to_linear(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``color_np.xyz_over_white_to_linear`` (computed in float64 there) in ``dtype`` on ``device``."""
    return torch.from_numpy(color_np.xyz_over_white_to_linear(np.float64).copy()).to(dtype=dtype, device=device)


def _keep_lightness_linear(l: torch.Tensor, ab: torch.Tensor, steps: int) -> torch.Tensor:
    """Linear RGB of ``lab_to_rgb_keep_lightness`` before clipping and encoding."""
    lin = _lab_to_linear(l, ab)
    outside = ~_linear_in_gamut(lin)[..., 0, :, :]  # (..., H, W)
    # Out-of-gamut pixels are found once and addressed by index, so any strides of ab are fine.
    px = (slice(None), *outside.nonzero(as_tuple=True))  # channel-first index of those pixels
    if px[1].numel():
        l_px = l.movedim(-3, 0)[px][:, None, :]  # (1, 1, K)
        ab_px = ab.movedim(-3, 0)[px][:, None, :]  # (2, 1, K)
        lin.movedim(-3, 0)[px] = _shrink_into_gamut(l_px, ab_px, steps)[:, 0, :]
    return lin


def _shrink_into_gamut(l: torch.Tensor, ab: torch.Tensor, steps: int) -> torch.Tensor:
    """Bisection on a per-pixel chroma scale in [0, 1] for out-of-gamut pixels ``(1, H, W)``/``(2, H, W)``;
    -> linear RGB at the largest scale found in gamut (0: gray, always in gamut)."""
    # Bisection from [0, 1] sets one binary digit of the scale per step; no torch.where (slow on CPU).
    scale = torch.zeros_like(l)
    for k in range(1, steps + 1):
        trial = scale + 0.5**k
        scale += _linear_in_gamut(_lab_to_linear(l, ab * trial)) * 0.5**k
    return _lab_to_linear(l, ab * scale)


def _linear_in_gamut(lin: torch.Tensor) -> torch.Tensor:
    return (lin.amin(dim=-3, keepdim=True) >= _LIN_MIN) & (lin.amax(dim=-3, keepdim=True) <= _LIN_MAX)


def _srgb_u8_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """``color_np.srgb_u8_tables`` as tensors."""
    return tuple(torch.from_numpy(t.copy()) for t in color_np.srgb_u8_tables())


def _linear_to_srgb_u8(lin: torch.Tensor) -> torch.Tensor:
    """Linear light ``(..., 3, H, W)`` -> ``round(255 * linear_to_srgb(lin.clamp(0, 1)))`` as uint8, by table.

    The result is laid out channels-last in memory (a permuted view), so that an ``(H, W, 3)`` image
    for an encoder is a free ``permute`` rather than a copy: the transposition rides on the first op.
    """
    base, thr = (t.to(lin.device) for t in _srgb_u8_tables())
    scaled = torch.empty(lin.movedim(-3, -1).shape, dtype=torch.float32, device=lin.device)
    torch.mul(lin.movedim(-3, -1), _SRGB_U8_BINS, out=scaled)  # a power of two: no rounding in float32
    # Clipping to the table's range is enough: below 0 the first threshold is not reached, above 1 there is none.
    flat = scaled.clamp_(0, _SRGB_U8_BINS).view(-1)
    idx = flat.to(torch.int32)  # floor
    out = base.index_select(0, idx)
    out += flat >= thr.index_select(0, idx)
    return out.view(scaled.shape).movedim(-1, -3)


def _u8_table(name: str) -> torch.Tensor:
    """Per-level tables for 8-bit input, from ``color_np``: "linear" (sRGB linearisation) and "gray_l"
    (L of R = G = B)."""
    table = color_np.linear_u8_table() if name == "linear" else color_np.gray_lightness_u8_table()
    return torch.from_numpy(table.copy())


def rgb_u8_to_lightness(rgb_u8: torch.Tensor) -> torch.Tensor:
    """CIELAB L of 8-bit sRGB, ``(..., 3, H, W)`` uint8 -> ``(..., 1, H, W)`` float32, equal to
    ``rgb_to_lightness(rgb_u8 / 255)``.

    Looked up per level instead of computed per pixel: the sRGB linearisation always, and for black
    and white input (R = G = B, e.g. a B&W film frame) L itself. Several times faster on a video
    frame, the same numbers up to float rounding.
    """
    r, g, b = rgb_u8.unbind(-3)
    if torch.equal(r, g) and torch.equal(g, b):
        return _u8_table("gray_l")[r.long()].unsqueeze(-3)
    lin = _u8_table("linear")[rgb_u8.long()]
    r, g, b = lin.unbind(-3)
    wr, wg, wb = _RGB_TO_XYZ[1]
    y = (wr * r + wg * g + wb * b).unsqueeze(-3)
    return torch.where(y > _EPS, 116 * y.clamp(min=_EPS) ** (1 / 3) - 16, _KAPPA * y)
