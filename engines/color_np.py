"""Colour conversion for 8-bit pictures in NumPy and OpenCV, without PyTorch: the film path and the
photo path that runs without PyTorch (``engines.ort_pipeline``) use it, and ``engines.color`` (the
same conventions, on torch tensors; see its docstring) takes its constants and tables from here, so
both compute the same numbers.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# D65 white point, CIE 1931 2-degree observer (scikit-image's "D65", "2").
WHITE_D65 = (0.95047, 1.0, 1.08883)

_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)

_EPS = 216.0 / 24389.0  # CIE epsilon: (6/29)^3
_KAPPA = 24389.0 / 27.0  # CIE kappa

# The gamut test: every sRGB value in [-tol, 1 + tol], applied in linear light (the bounds mapped
# through the sRGB curve), before any encoding.
_GAMUT_TOL = 1e-3
_LIN_MIN = -_GAMUT_TOL / 12.92
_LIN_MAX = ((1 + _GAMUT_TOL + 0.055) / 1.055) ** 2.4
# The CIE f^-1 without a branch: its linear segment is the tangent of f^3 at the switch point.
_F_SWITCH = 6.0 / 29.0  # f^3 = _EPS there
_F_SLOPE = 116.0 / _KAPPA

# Linear light -> 8-bit sRGB by table. Level k starts where the exact encoding reaches k - 0.5, at
# linear threshold T[k]. The table splits [0, 1] into _SRGB_U8_BINS bins narrower than the closest two
# thresholds (3.0e-4 apart, just above black), so a bin holds at most one: a value's level is the
# bin's level at its start, plus one if the value reaches the threshold inside the bin.
_SRGB_U8_BINS = 4096


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (float64 here: the tables below)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return np.where(rgb <= 0.04045, rgb / 12.92, ((np.maximum(rgb, 0.04045) + 0.055) / 1.055) ** 2.4)


def lightness_of_luminance(y: np.ndarray) -> np.ndarray:
    """CIELAB L of relative luminance Y (white 1), elementwise, in the dtype of ``y``."""
    y = np.asarray(y)
    return np.where(y > _EPS, 116 * np.maximum(y, _EPS) ** (1 / 3) - 16, _KAPPA * y).astype(y.dtype)


@functools.cache
def linear_u8_table() -> np.ndarray:
    """(256,) float32: the linear light of each 8-bit sRGB level."""
    table = srgb_to_linear(np.arange(256) / 255).astype(np.float32)
    table.flags.writeable = False  # shared by every caller
    return table


@functools.cache
def gray_lightness_u8_table() -> np.ndarray:
    """(256,) float32: the CIELAB L of the gray R = G = B of each 8-bit level (the matrix's luminance
    row, summed in float64, times the level's linear light)."""
    lin = srgb_to_linear(np.arange(256) / 255)
    table = lightness_of_luminance(np.array(_RGB_TO_XYZ[1]) @ np.stack((lin, lin, lin))).astype(np.float32)
    table.flags.writeable = False
    return table


@functools.cache
def xyz_over_white_to_linear(dtype: type = np.float32) -> np.ndarray:
    """(3, 3): the inverse of ``_RGB_TO_XYZ`` with the white point folded in (XYZ / white -> linear
    RGB), computed in float64, given in ``dtype``."""
    m = (np.linalg.inv(np.array(_RGB_TO_XYZ)) * np.array(WHITE_D65)).astype(dtype)
    m.flags.writeable = False
    return m


def _level_tables(thresholds: np.ndarray, top: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables for rounding a value in [0, top] to a level by lookup: (the level at each of ``bins``
    equal bins' start, uint8; the threshold inside the bin or +inf, float32), ``bins + 1`` entries each.
    ``thresholds`` (float64, increasing) are where levels 1..255 begin; bins must be narrower than
    their closest two, so that a bin holds at most one."""
    width = top / bins
    assert float(np.diff(thresholds).min()) > width
    starts = np.arange(bins + 1) * width
    base = np.searchsorted(thresholds, starts, side="right")  # thresholds <= start
    nxt = thresholds[np.minimum(base, 254)]
    inside = (base < 255) & (nxt < starts + width)
    # Rounded up to float32 so that ``x >= thr`` for float32 x means x >= the exact threshold.
    thr = nxt.astype(np.float32)
    thr = np.where(thr.astype(np.float64) < nxt, np.nextafter(thr, np.float32(np.inf)), thr)
    return base.astype(np.uint8), np.where(inside, thr, np.float32(np.inf)).astype(np.float32)


@functools.cache
def srgb_u8_tables() -> tuple[np.ndarray, np.ndarray]:
    """(level at each bin's start, uint8; the threshold inside the bin or +inf, float32, times
    ``_SRGB_U8_BINS``), ``_SRGB_U8_BINS + 1`` entries each."""
    base, thr = _level_tables(srgb_to_linear((np.arange(1, 256) - 0.5) / 255), 1.0, _SRGB_U8_BINS)
    thr = thr * np.float32(_SRGB_U8_BINS)  # scaled like the values, exactly
    base.flags.writeable = thr.flags.writeable = False
    return base, thr


# Bins over L in [0, 100] for ``gray_u8_of_lightness``: narrower than the closest two gray levels' L
# thresholds (0.27 apart, just above black).
_GRAY_L_BINS = 4096


@functools.cache
def _gray_level_tables() -> tuple[np.ndarray, np.ndarray]:
    """``_level_tables`` of the gray levels over L: the L where each gray sRGB level k - 1/2 lies."""
    thresholds = lightness_of_luminance(srgb_to_linear((np.arange(1, 256) - 0.5) / 255))
    base, thr = _level_tables(thresholds, 100.0, _GRAY_L_BINS)
    base.flags.writeable = thr.flags.writeable = False
    return base, thr


def gray_u8_of_lightness(l: np.ndarray) -> np.ndarray:
    """L float32 in [0, 100] (any shape) -> the 8-bit sRGB level of its gray (a = b = 0), uint8: the
    exact rounding of the gray's sRGB value, by two table lookups. Composing L with zero chroma
    (``lab_hwc_to_rgb_u8_keep_lightness``) gives the same level but for float rounding at a level's
    boundary, at 3-4 times the cost for one channel."""
    base, thr = _gray_level_tables()
    idx = (np.asarray(l, np.float32) * np.float32(_GRAY_L_BINS / 100)).astype(np.int32)
    np.clip(idx, 0, _GRAY_L_BINS, out=idx)
    return base[idx] + (l >= thr[idx])


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
        return lightness_of_luminance(np.float32(_RGB_TO_XYZ[1]) @ linear_u8_table()[rgb_u8.reshape(3)]).reshape(h, w)
    rgb_u8 = np.ascontiguousarray(rgb_u8)
    first = rgb_u8[..., 0]
    if np.array_equal(first, rgb_u8[..., 1]) and np.array_equal(first, rgb_u8[..., 2]):
        return gray_lightness_u8_table()[first]  # black and white (R = G = B): L is a function of the level
    lin = cv2.LUT(rgb_u8, linear_u8_table())
    # As one row: OpenCV also takes a one-column array of up to 4 values (a 4x1 photo) for a scalar.
    y = cv2.transform(lin, np.float32(_RGB_TO_XYZ[1:2])).reshape(1, h * w)
    # The cube root as exp(log(y) / 3): a third of cv2.pow's time, within 1e-6 relative.
    root = cv2.exp(cv2.multiply(cv2.log(cv2.max(y, _EPS)), 1 / 3))
    below = cv2.subtract(cv2.min(y, _EPS, dst=y), _EPS, dst=y)
    return cv2.addWeighted(root, 116.0, below, _KAPPA, -16.0).reshape(h, w)


def rgb_hwc_to_lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L ``(H, W)`` float32 of sRGB values in [0, 1] ``(H, W, 3)`` (16-bit photos, reference frames)."""
    import cv2

    h, w = rgb.shape[:2]
    lin = srgb_to_linear(rgb).astype(np.float32).reshape(1, h * w, 3)
    return lightness_of_luminance(cv2.transform(lin, np.float32(_RGB_TO_XYZ[1:2]))).reshape(h, w)


def gray_u8_lightness_table(levels: np.ndarray) -> np.ndarray:
    """For a decoder's luma level -> gray RGB level mapping ``levels`` (256 uint8), the CIELAB L of each
    luma level (256 float32): gray video frames go straight from their Y plane to L with one ``cv2.LUT``."""
    return gray_lightness_u8_table()[levels]


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
    m = xyz_over_white_to_linear()
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
    base, thr = srgb_u8_tables()
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
    cv2.transform(t.reshape(h, w, 3), xyz_over_white_to_linear(), dst=dst)


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
