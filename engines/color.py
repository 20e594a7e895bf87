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
import math

import numpy as np
import torch

# D65 white point, CIE 1931 2-degree observer (scikit-image's "D65", "2").
WHITE_D65 = (0.95047, 1.0, 1.08883)

_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
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

_EPS = 216.0 / 24389.0  # CIE epsilon: (6/29)^3
_KAPPA = 24389.0 / 27.0  # CIE kappa


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


# The gamut test: every sRGB value in [-tol, 1 + tol], applied in linear light (the bounds mapped
# through the sRGB curve), before any encoding.
_GAMUT_TOL = 1e-3
_LIN_MIN = -_GAMUT_TOL / 12.92
_LIN_MAX = ((1 + _GAMUT_TOL + 0.055) / 1.055) ** 2.4
# The CIE f^-1 without a branch (torch.where is slow on CPU): its linear segment is the tangent of f^3
# at the switch point.
_F_SWITCH = 6.0 / 29.0  # f^3 = _EPS there
_F_SLOPE = 116.0 / _KAPPA


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
    """The inverse of ``_RGB_TO_XYZ`` with the white point folded in: XYZ / white -> linear RGB."""
    white = torch.tensor(WHITE_D65, dtype=torch.float64)
    return (torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)) * white).to(dtype=dtype, device=device)


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


# Linear light -> 8-bit sRGB by table. Level k starts where the exact encoding reaches k - 0.5, at
# linear threshold T[k]. The table splits [0, 1] into _SRGB_U8_BINS bins narrower than the closest two
# thresholds (3.0e-4 apart, just above black), so a bin holds at most one: a value's level is the
# bin's level at its start, plus one if the value reaches the threshold inside the bin.
_SRGB_U8_BINS = 4096


@functools.cache
def _srgb_u8_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """(level at each bin's start, uint8; the threshold inside the bin or +inf, float32, times
    ``_SRGB_U8_BINS``), ``_SRGB_U8_BINS + 1`` entries each."""
    levels = (torch.arange(1, 256, dtype=torch.float64) - 0.5) / 255
    thresholds = srgb_to_linear(levels)  # T[1..255]
    assert float(thresholds.diff().min()) > 1 / _SRGB_U8_BINS
    starts = torch.arange(_SRGB_U8_BINS + 1, dtype=torch.float64) / _SRGB_U8_BINS
    base = torch.searchsorted(thresholds, starts, right=True)  # thresholds <= start
    nxt = thresholds[base.clamp(max=254)]
    inside = (base < 255) & (nxt < starts + 1 / _SRGB_U8_BINS)
    # Rounded up to float32 so that ``x >= thr`` for float32 x means x >= the exact threshold.
    thr = nxt.float()
    thr = torch.where(thr.double() < nxt, torch.nextafter(thr, torch.tensor(float("inf"))), thr)
    thr = torch.where(inside, thr, torch.tensor(float("inf")))
    return base.to(torch.uint8), thr * _SRGB_U8_BINS  # scaled like the values, exactly


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


_U8_TABLES: dict[str, torch.Tensor] = {}


def _u8_table(name: str) -> torch.Tensor:
    """Per-level tables for 8-bit input: "linear" (sRGB linearisation) and "gray_l" (L of R = G = B)."""
    if name not in _U8_TABLES:
        levels = torch.arange(256, dtype=torch.float64) / 255
        _U8_TABLES["linear"] = srgb_to_linear(levels).float()
        _U8_TABLES["gray_l"] = rgb_to_lightness(levels.expand(3, 1, 256))[0, 0].float()
    return _U8_TABLES[name]


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


def rgb_u8_hwc_to_lightness(rgb_u8: np.ndarray) -> np.ndarray:
    """CIELAB L ``(H, W)`` float32 of 8-bit sRGB ``(H, W, 3)`` uint8 laid out channels-last (a decoded
    video frame or 8-bit photo): ``rgb_u8_to_lightness`` without the int64 gather and the branch.

    Black and white input (R = G = B) is one table lookup of L per level. Otherwise the linearisation
    is a per-level table (``cv2.LUT``), the luminance one ``cv2.transform``, and the
    CIE f a branch-free ``116 * cbrt(max(Y, eps)) - 16 + kappa * min(Y - eps, 0)``: the two segments
    meet at eps (both give 8), so this is the piecewise formula exactly.
    """
    import cv2  # the film path's dependency; training and photo callers need not load it

    h, w = rgb_u8.shape[:2]
    if h * w == 1:  # OpenCV would take a one-value array for a scalar
        return rgb_u8_to_lightness(torch.from_numpy(rgb_u8).permute(2, 0, 1))[0].numpy()
    rgb_u8 = np.ascontiguousarray(rgb_u8)
    first = rgb_u8[..., 0]
    if np.array_equal(first, rgb_u8[..., 1]) and np.array_equal(first, rgb_u8[..., 2]):
        return _u8_table("gray_l").numpy()[first]  # black and white (R = G = B): L is a function of the level
    lin = cv2.LUT(rgb_u8, _u8_table("linear").numpy())
    # As one row: OpenCV also takes a one-column array of up to 4 values (a 4x1 photo) for a scalar.
    y = cv2.transform(lin, np.float32([_RGB_TO_XYZ[1]])).reshape(1, h * w)
    # The cube root as exp(log(y) / 3): a third of cv2.pow's time, within 1e-6 relative.
    root = cv2.exp(cv2.multiply(cv2.log(cv2.max(y, _EPS)), 1 / 3))
    below = cv2.subtract(cv2.min(y, _EPS, dst=y), _EPS, dst=y)
    return cv2.addWeighted(root, 116.0, below, _KAPPA, -16.0).reshape(h, w)


def gray_u8_lightness_table(levels: np.ndarray) -> np.ndarray:
    """For a decoder's luma level -> gray RGB level mapping ``levels`` (256 uint8), the CIELAB L of each
    luma level (256 float32): gray video frames go straight from their Y plane to L with one ``cv2.LUT``."""
    return _u8_table("gray_l").numpy()[levels]


def lab_hwc_to_rgb_u8_keep_lightness(l: np.ndarray, ab: np.ndarray, steps: int = 6) -> np.ndarray:
    """``lab_to_rgb_keep_lightness`` rounded to 8 bits for channels-last NumPy arrays, by OpenCV: L
    ``(H, W)`` and ab ``(H, W, 2)`` float32 -> sRGB ``(H, W, 3)`` uint8. Films, and photos written at 8 bits.

    The same steps as ``_lab_to_rgb_u8_keep_lightness``, each one OpenCV pass, over bands of rows that
    stay in the CPU cache (everything a band needs is made and encoded while it is there): f(L, a, b)
    is one affine ``cv2.transform``, the CIE f^-1 the same branch-free tangent form, then linear RGB.
    The gamut test is a band's min and max, and only a band with a value outside finds its pixels
    (``cv2.inRange``); those pixels, a small fraction of a frame, go through the bisection
    (``_shrink_into_gamut_np``, the torch bisection without its per-operation overhead) and the exact
    table encoding at the end, over their first encoding.
    The sRGB encoding of the rest is the piecewise curve computed branch-free (see
    ``_linear_to_srgb_u8_hwc``): equal to the table path except where a value lies within float
    rounding of a level boundary.
    """
    import cv2  # the film path's dependency

    h, w = l.shape
    l = np.ascontiguousarray(l, dtype=np.float32)
    ab = np.ascontiguousarray(ab, dtype=np.float32)
    out = np.empty((h, w, 3), np.uint8)
    band = max(1, _CACHE_BAND_VALUES // (3 * w))
    scratch = np.empty((2, band, w, 3), np.float32)  # reused by every band: no fresh memory per pass
    outside = []
    for y in range(0, h, band):
        r, n = slice(y, y + band), min(band, h - y)
        lin, tmp = scratch[:, :n]
        _lab_to_linear_hwc(cv2, l[r], ab[r], lin, tmp)
        low, high = cv2.minMaxLoc(lin.reshape(n, w * 3))[:2]
        if low < _LIN_MIN or high > _LIN_MAX:
            inside = cv2.inRange(lin, (_LIN_MIN,) * 3, (_LIN_MAX,) * 3)
            outside.append(np.flatnonzero(inside.reshape(-1) == 0) + y * w)
        _linear_to_srgb_u8_hwc(cv2, lin, out[r], tmp)
    if outside:  # a small fraction of a frame, in one batch
        px = np.concatenate(outside)
        lin = _shrink_into_gamut_np(l.reshape(-1)[px], ab.reshape(-1, 2)[px], steps)
        out.reshape(-1, 3)[px] = _linear_to_srgb_u8_np(lin)
    return out


def _shrink_into_gamut_np(l: np.ndarray, ab: np.ndarray, steps: int) -> np.ndarray:
    """``_shrink_into_gamut`` for the few out-of-gamut pixels of a frame, in NumPy: L ``(K,)`` and ab
    ``(K, 2)`` float32 -> linear RGB ``(K, 3)``. The same bisection on the same formula, channel by
    channel (torch fuses some multiply-adds and sums the matrix product in its own order, so a trial
    scale within float rounding of the gamut's edge may fall the other way); at a few thousand pixels
    torch's per-operation overhead cost 1-2 ms a frame."""
    m = _xyz_over_white_to_linear(torch.float32, torch.device("cpu")).numpy()
    switch, slope = np.float32(_F_SWITCH), np.float32(_F_SLOPE)

    def t_of(f: np.ndarray) -> np.ndarray:  # f^3 above the switch, the tangent line below (as _lab_to_linear)
        g = np.maximum(f, switch)
        return g * g * g + slope * (f - g)

    fy = (l + np.float32(16)) / np.float32(116)
    ty = t_of(fy)  # the same at every scale: L is kept
    a_step, b_step = ab[:, 0] * np.float32(1 / 500), ab[:, 1] * np.float32(-1 / 200)

    def linear(scale) -> list[np.ndarray]:
        tx, tz = t_of(fy + a_step * scale), t_of(fy + b_step * scale)
        return [row[0] * tx + row[1] * ty + row[2] * tz for row in m]

    scale = np.zeros_like(l)
    for k in range(1, steps + 1):
        r, g, b = linear(scale + np.float32(0.5**k))
        low, high = np.minimum(np.minimum(r, g), b), np.maximum(np.maximum(r, g), b)
        scale += ((low >= _LIN_MIN) & (high <= _LIN_MAX)) * np.float32(0.5**k)
    return np.stack(linear(scale), axis=1)


def _linear_to_srgb_u8_np(lin: np.ndarray) -> np.ndarray:
    """``_linear_to_srgb_u8`` for NumPy values of any shape (the same table and arithmetic, so the
    same levels)."""
    base, thr = (t.numpy() for t in _srgb_u8_tables())
    scaled = np.clip(lin * np.float32(_SRGB_U8_BINS), 0, _SRGB_U8_BINS).astype(np.float32)
    idx = scaled.astype(np.int32)  # floor
    return base[idx] + (scaled >= thr[idx])


# Values per band of a channels-last frame for the element-wise passes: a band's float32 temporaries
# stay in the CPU's cache, where a whole 854x480 frame (1.2 M values) would stream from memory on each
# of a dozen passes.
_CACHE_BAND_VALUES = 1 << 16


def _lab_to_linear_hwc(cv2, l: np.ndarray, ab: np.ndarray, dst: np.ndarray, tmp: np.ndarray) -> None:
    """``_lab_to_linear`` for channels-last bands, into ``dst (h, w, 3)``; ``tmp`` is scratch of that shape."""
    h, w = l.shape
    flat = (h, w * 3)  # element-wise steps on a one-channel view: OpenCV applies a scalar to channel 0 only
    f = cv2.transform(cv2.merge((l, ab), dst=dst), _LAB_TO_F, dst=tmp).reshape(flat)
    g = cv2.max(f, _F_SWITCH, dst=dst.reshape(flat))
    d = cv2.subtract(f, g, dst=f)  # <= 0: the distance below the switch
    t = cv2.scaleAdd(d, _F_SLOPE, cv2.pow(g, 3, dst=g), dst=d)  # an integer power: one pass of products
    cv2.transform(t.reshape(h, w, 3), _xyz_over_white_to_linear(torch.float32, torch.device("cpu")).numpy(), dst=dst)


# The sRGB curve's knee: 12.92 x below, 1.055 x^(1/2.4) - 0.055 above (the segments meet there).
_SRGB_KNEE = 0.0031308


def _linear_to_srgb_u8_hwc(cv2, lin: np.ndarray, dst: np.ndarray, tmp: np.ndarray) -> None:
    """Linear light in the gamut test's range [_LIN_MIN, _LIN_MAX] -> 8-bit sRGB of the value clipped to
    [0, 1], for channels-last bands, into ``dst``; overwrites ``lin`` and ``tmp`` (scratch of its shape).

    Branch-free: ``255 * (1.055 * max(x, knee)^(1/2.4) - 0.055 + 12.92 * (min(x, knee) - knee))``,
    the power as ``exp(log(x) / 2.4 + log(1.055 * 255))`` (a third of ``cv2.pow``'s time, and as close:
    9e-5 of a level at worst against float64), rounded and clipped by ``cv2.convertScaleAbs``: values
    above 1 give more than 255, which saturates; one below 0 (down to _LIN_MIN) gives at most 0.26 in
    magnitude, which the absolute value and rounding take to 0.
    """
    h, w = lin.shape[:2]
    lin = lin.reshape(h, w * 3)
    low = cv2.min(lin, _SRGB_KNEE, dst=tmp.reshape(h, w * 3))
    log = cv2.log(cv2.max(lin, _SRGB_KNEE, dst=lin), dst=lin)
    high = cv2.exp(cv2.addWeighted(log, 1 / 2.4, log, 0.0, math.log(1.055 * 255), dst=log), dst=log)
    srgb = cv2.addWeighted(high, 1.0, low, 12.92 * 255, -0.055 * 255 - 12.92 * 255 * _SRGB_KNEE, dst=high)
    cv2.convertScaleAbs(srgb, dst=dst.reshape(h, w * 3))


# f = (L + 16) / 116 + (a / 500, 0, -b / 200), as an affine map of (L, a, b) for cv2.transform.
_LAB_TO_F = np.float32([[1 / 116, 1 / 500, 0, 16 / 116], [1 / 116, 0, 0, 16 / 116], [1 / 116, 0, -1 / 200, 16 / 116]])
