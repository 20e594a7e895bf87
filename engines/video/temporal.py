"""Temporal consistency for video: motion-guided smoothing of predicted chroma, and the warping error.

Optical flow
------------
Dense flow comes from OpenCV's DIS (Kroeger et al. 2016) on CIELAB lightness quantised to 8 bits.
``flow`` arrays are ``(H, W, 2)`` float32 ``(dx, dy)`` in pixels and are *backward* in the sense
used by ``cv2.remap``: ``flow = dense_flow(a, b)`` means ``a(x) ~ b(x + flow(x))``, so
``warp(b, flow)`` brings ``b`` onto ``a``'s pixel grid.

Smoothing (``ChromaSmoother``)
------------------------------
Per-frame chroma predictions flicker: the engine sees each frame alone. For frame t, with ``w`` the
strength (0..1) and ``m(x)`` in [0, 1] the reliability of the motion at x::

    ab_out_t = (1 - w * m) * ab_pred_t + w * m * warp(ab_out_{t-1}, flow_t->t-1)

a recursive (exponential) average along motion trajectories: i.i.d. flicker of standard deviation s
keeps ``s * sqrt((1 - w) / (1 + w))`` (half at w = 0.6), a genuine colour change takes about
``1 / (1 - w)`` frames (2.5 at w = 0.6) to come through, and where the motion is unreliable the
prediction is used as it is. Only ab is touched, never L.

``m`` is 1 where the warp can be trusted and 0 where it cannot:
- forward-backward consistency (Sundaram et al. 2010, the occlusion test of Ruder et al. 2016 and
  Lai et al. 2018): ``|f_b(x) + f_f(x + f_b(x))|^2 <= 0.01 (|f_b|^2 + |f_f|^2) + 0.5`` px^2, and
  ``x + f_b(x)`` inside the previous frame;
- a photometric check: the previous lightness warped onto this frame must match it within
  ``PHOTO_TOLERANCE`` L units after removing the median difference (so global flicker of old film
  stock, which changes every pixel's L alike, does not count as a mismatch);
then softened by a 3x3 box filter so that mask edges do not print as seams.

Flow is computed on L downscaled to a long side of at most ``FLOW_LONG_SIDE`` pixels (chroma is
low-frequency; at 320 px DIS "ultrafast" costs about a millisecond per frame), and the blend runs at
that size too: with ``down`` a downscale (``_shrink_to``) and ``up`` a bilinear upscale, the output is
``ab_pred_t + up(w * m * (warp(down(ab_out_{t-1})) - down(ab_pred_t)))``: only the correction is
upsampled, so the output keeps the current prediction's full-size detail, and the recursion carries
the flow-sized output. (Until 2026-12 the warp and blend ran at full size; the warping error and ab
error of both are in benchmarks/results/video.md.)

Frames the engine skips: a film may run the engine on every n-th frame only (``--engine-interval``).
A frame between takes the previous frame's prediction warped along its motion (the flow above, scaled
up to the prediction's size), the keyframe propagation of Zhu et al. 2017 ("Deep Feature Flow"),
and is then smoothed as any prediction. Where the motion cannot carry it, the engine colours the
frame after all: the first frame, a scene cut, and a frame where less than ``min_followed`` of the
pixels pass the motion checks below (fast motion and occlusion, where the warp would carry another
object's colour). Measured on the dev clips in docs/experiments.md.

Scene cuts: blending across a cut would paint the new shot with the old shot's colours. A cut is
declared when the lightness histograms of consecutive frames (32 bins over L in [0, 100], of the
flow-sized frame) are further apart than ``scene_cut_threshold`` in total-variation distance
(half the L1 distance: 0 = same distribution, 1 = disjoint); the smoother then restarts from the raw
prediction. A histogram ignores where things are, so camera and object motion barely move it, while a
new shot changes it. Calibrated on ../shared/data/video-dev (``python -m benchmarks.video
--calibrate-cuts``): consecutive frames of the eight davis clips score at most 0.13 (fast motion in
motocross-jump) and of the flickering old film at most 0.16, while the 56 joins of two different
davis clips score 0.21 to 0.89; 0.18 sits between. The failure modes are mild: a false cut only
drops the smoothing for one frame, and a missed cut between two shots with the same tonal
distribution is still kept from blending by the consistency and photometric checks, which fail
almost everywhere across a cut (at most 9 % of pixels pass on those 56 joins).

Warping error (``warping_error``)
--------------------------------
Lai et al. 2018 ("Learning Blind Video Temporal Consistency"): for consecutive frames t, t+1, the
flow from t to t+1 and its occlusion mask are computed on the *reference* (original) frames; the
output frame t+1 is warped back onto t and the squared RGB difference (summed over the three
channels, RGB in [0, 1]) is averaged over the non-occluded pixels; the result is averaged over pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np

from engines import color_np

FLOW_LONG_SIDE = 320
CUT_BINS = 32
DEFAULT_SCENE_CUT_THRESHOLD = 0.18
PHOTO_TOLERANCE = 10.0  # L units
# Forward-backward consistency constants (Sundaram et al. 2010).
FB_ALPHA = 0.01
FB_BETA = 0.5


# ---------------------------------------------------------------------------------------------
# Flow, warping, occlusion
# ---------------------------------------------------------------------------------------------


def lightness_u8(l: np.ndarray) -> np.ndarray:
    """L ``(H, W)`` in [0, 100] -> uint8 in [0, 255] (what DIS takes)."""
    return np.clip(l * 2.55 + 0.5, 0, 255).astype(np.uint8)


def resize_long_side(img: np.ndarray, long_side: int) -> np.ndarray:
    """Downscale (``_shrink_to``) so that the long side is at most ``long_side`` (never upscales)."""
    h, w = img.shape[:2]
    scale = long_side / max(h, w)
    if scale >= 1:
        return img
    return _shrink_to(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def _shrink_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` downscaled to ``size`` (rows, columns); itself when it already has that size.

    Bilinear where it shrinks by less than 2 (each output then still draws on every input pixel near
    it, so nothing is skipped), area-averaged beyond. OpenCV's area filter at a ratio that is not a
    whole number (an 854x480 film's 427x240 chroma to the flow's 320x180) costs 9x the bilinear (0.31
    against 0.035 ms a plane); on the dev clips the smoothing's warping error, ab change and ab error
    stayed within 0.2 % (docs/experiments.md, session 10)."""
    if img.shape[:2] == tuple(size):
        return img
    h, w = img.shape[:2]
    interpolation = cv2.INTER_LINEAR if h < 2 * size[0] and w < 2 * size[1] else cv2.INTER_AREA
    return cv2.resize(img, (size[1], size[0]), interpolation=interpolation)


def make_dis(preset: int = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST) -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(preset)


def dense_flow(a_u8: np.ndarray, b_u8: np.ndarray, dis: cv2.DISOpticalFlow | None = None) -> np.ndarray:
    """Flow with ``a(x) ~ b(x + flow(x))``; uint8 ``(H, W)`` images -> float32 ``(H, W, 2)``."""
    dis = dis or make_dis()
    return dis.calc(np.ascontiguousarray(a_u8), np.ascontiguousarray(b_u8), None)


def _grid(h: int, w: int) -> np.ndarray:
    """``(H, W, 2)`` float32: each pixel's own (x, y), to which a flow adds (what ``cv2.remap`` takes as one map)."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.merge((gx, gy))


def _sample(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``image`` sampled at ``coords`` (``(H, W, 2)`` float32 x, y), bilinear, edges replicated."""
    return cv2.remap(image, coords, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp(image: np.ndarray, flow: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """``out(x) = image(x + flow(x))``, bilinear, edges replicated. ``image (H, W)`` or ``(H, W, C)``
    float32 (C <= 4), ``flow (H, W, 2)``. ``grid`` (``_grid`` of the same size) saves rebuilding it."""
    return _sample(image, cv2.add(flow, grid if grid is not None else _grid(*flow.shape[:2])))


def consistency_mask(
    flow_ab: np.ndarray,
    flow_ba: np.ndarray,
    alpha: float = FB_ALPHA,
    beta: float = FB_BETA,
    grid: np.ndarray | None = None,
    coords: np.ndarray | None = None,
) -> np.ndarray:
    """Where ``flow_ab`` is trustworthy: bool ``(H, W)``.

    ``flow_ab`` maps a's pixels into b, ``flow_ba`` b's into a. A pixel passes when following
    ``flow_ab`` and then ``flow_ba`` comes back to it (up to the Sundaram et al. tolerance) and when
    ``x + flow_ab(x)`` lies inside b; occluded and disoccluded pixels fail. ``coords``, if given, is
    ``flow_ab + grid`` already made (the smoother samples with it too).
    """
    h, w = flow_ab.shape[:2]
    if coords is None:
        coords = cv2.add(flow_ab, grid if grid is not None else _grid(h, w))
    back = _sample(flow_ba, coords)  # flow_ba at x + flow_ab(x)
    # Contiguous planes: the arithmetic below on strided channel views cost twice as much.
    (fx, fy), (bx, by) = cv2.split(flow_ab), cv2.split(back)
    err = (fx + bx) ** 2 + (fy + by) ** 2
    bound = alpha * (fx * fx + fy * fy + bx * bx + by * by) + beta
    inside = cv2.inRange(coords, (0.0, 0.0), (w - 1.0, h - 1.0)).view(bool)  # 255 -> True
    return (err <= bound) & inside


# ---------------------------------------------------------------------------------------------
# Scene cuts and smoothing
# ---------------------------------------------------------------------------------------------


def lightness_histogram(l_u8: np.ndarray) -> np.ndarray:
    """Normalised 32-bin histogram (float64, sums to 1) of a ``lightness_u8`` image."""
    counts = np.bincount((l_u8 >> 3).ravel(), minlength=CUT_BINS).astype(np.float64)
    return counts / max(1.0, counts.sum())


def cut_score(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Total-variation distance in [0, 1] of two ``lightness_histogram``s."""
    return float(0.5 * np.abs(hist_a - hist_b).sum())


class ChromaSmoother:
    """Motion-guided recursive smoothing of predicted ab, one frame at a time (see the module doc).

    ``step(l, ab)`` takes ``l (H, W)`` float32 in [0, 100] and the raw prediction ``ab (H, W, 2)``
    float32, and returns the smoothed ``ab (H, W, 2)``. State: the previous frame's small L and output
    ab only, so memory does not grow with the film. Not thread-safe (one per video).
    """

    def __init__(
        self,
        strength: float = 0.6,
        scene_cut_threshold: float = DEFAULT_SCENE_CUT_THRESHOLD,
        flow_long_side: int = FLOW_LONG_SIDE,
        preset: int = cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
        min_followed: float = 0.0,
    ):
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.strength = strength
        self.scene_cut_threshold = scene_cut_threshold
        self.flow_long_side = flow_long_side
        self.min_followed = min_followed  # see ``step``
        self._dis = make_dis(preset)
        self._grids: dict[tuple[int, int], np.ndarray] = {}
        self.cuts = 0  # scene cuts detected so far
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next frame is used as predicted."""
        self._prev_small: np.ndarray | None = None
        self._prev_hist: np.ndarray | None = None
        self._prev_ab: np.ndarray | None = None  # the previous output ab at flow size
        self._prev_shape: tuple[int, ...] | None = None  # and at full size, its shape
        self._prev_pred: np.ndarray | None = None  # the previous frame's prediction, full size (propagation)

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything ``step`` depends on, as arrays (for saving); ``set_state`` puts it back."""
        if self._prev_ab is None:
            return {"cuts": np.int64(self.cuts)}
        return {
            "cuts": np.int64(self.cuts),
            "small": self._prev_small,
            "hist": self._prev_hist,
            "ab": self._prev_ab,
            "shape": np.asarray(self._prev_shape, np.int64),
            "pred": self._prev_pred,
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.cuts = int(state["cuts"])
        self._prev_small, self._prev_hist, self._prev_ab, self._prev_pred = (
            state.get(k) for k in ("small", "hist", "ab", "pred")
        )
        shape = state.get("shape")
        self._prev_shape = None if shape is None else tuple(int(n) for n in shape)

    def step(self, l: np.ndarray, ab: np.ndarray | Callable[[], np.ndarray]) -> np.ndarray:
        """The smoothed ab of the frame with lightness ``l``, given its prediction ``ab``.

        For a frame the engine skipped (``ab`` a callable that would predict it), the previous frame's
        prediction is carried along this frame's motion to it (``_propagate``) and smoothed as a
        prediction would be. ``ab()`` is called where the motion cannot carry it: the first frame, a
        scene cut, and a frame where less than ``min_followed`` of the pixels pass the motion
        checks (fast motion, occlusion: what the warp would carry there is not this frame's).
        """
        small = lightness_u8(resize_long_side(np.ascontiguousarray(l, dtype=np.float32), self.flow_long_side))
        hist = lightness_histogram(small)
        shape = (*l.shape, 2)
        # Motion is followed to smooth (strength > 0) or to carry a prediction over a skipped frame.
        follows = (self.strength > 0 or callable(ab)) and self._prev_ab is not None and self._prev_shape == shape
        if follows and cut_score(hist, self._prev_hist) > self.scene_cut_threshold:
            self.cuts += 1
            follows = False
        if follows:
            flow_b, coords, mask = self._motion(small)
        if callable(ab):
            carry = follows and self._prev_pred is not None and float(mask.mean()) >= self.min_followed
            ab = self._propagate(flow_b, shape) if carry else ab()
        ab = np.ascontiguousarray(ab, dtype=np.float32)
        ab_small = _shrink_to(ab, small.shape)
        out, out_small = ab, ab_small
        if follows and self.strength > 0:
            # w * m * (warp(previous output) - prediction), at flow size; only this correction is
            # upsampled and added to the full-size prediction, which keeps its full-size detail (the
            # motion, the mask and the previous output are flow-sized anyway).
            weight = mask * self.strength
            correction = cv2.subtract(_sample(self._prev_ab, coords), ab_small)
            correction = cv2.multiply(correction, cv2.merge((weight, weight)), dst=correction)
            out_small = cv2.add(ab_small, correction)
            if correction.shape != ab.shape:
                correction = cv2.resize(correction, (ab.shape[1], ab.shape[0]), interpolation=cv2.INTER_LINEAR)
            out = cv2.add(ab, correction)
        self._prev_small, self._prev_hist, self._prev_ab, self._prev_shape = small, hist, out_small, shape
        self._prev_pred = ab
        return out

    def _propagate(self, flow_b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """The previous frame's prediction warped onto this frame (``warp`` with the flow scaled up to
        full size): the keyframe propagation of Zhu et al. 2017 (Deep Feature Flow), on the output."""
        h, w = shape[:2]
        sh, sw = flow_b.shape[:2]
        flow = cv2.resize(flow_b, (w, h), interpolation=cv2.INTER_LINEAR)
        flow = cv2.multiply(flow, (w / sw, h / sh, 0, 0), dst=flow)
        return warp(self._prev_pred, flow, self._grid_for(h, w))

    def _motion(self, small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This frame's motion from the previous one, at flow size: the flow (this frame -> previous),
        the coordinates it points to (flow + grid) and ``m``, where the warp can be trusted (float32 in
        [0, 1]; see the module doc)."""
        flow_b = dense_flow(small, self._prev_small, self._dis)  # this frame -> previous
        flow_f = dense_flow(self._prev_small, small, self._dis)  # previous -> this frame
        coords = cv2.add(flow_b, self._grid_for(*small.shape))  # where each pixel comes from
        ok = consistency_mask(flow_b, flow_f, coords=coords)
        # Photometric check, robust to global flicker: the median difference is removed first.
        diff = small.astype(np.float32) - _sample(self._prev_small.astype(np.float32), coords)
        diff -= _median(diff[::2, ::2])
        ok &= np.abs(diff) <= PHOTO_TOLERANCE * 2.55
        return flow_b, coords, cv2.blur(ok.astype(np.float32), (3, 3))

    def _grid_for(self, h: int, w: int) -> np.ndarray:
        grid = self._grids.get((h, w))
        if grid is None:
            grid = self._grids[(h, w)] = _grid(h, w)
        return grid


def _median(x: np.ndarray) -> float:
    """``np.median(x)``, by partitioning a contiguous copy: on a strided view of a flow-sized frame
    ``np.median`` took 1.5-6 ms, this 0.05."""
    v = x.ravel()  # np.partition returns a partitioned copy: x is left as it was
    k = v.size // 2
    if v.size % 2:
        return float(np.partition(v, k)[k])
    lo, hi = np.partition(v, (k - 1, k))[k - 1 : k + 1]
    return float((lo + hi) / 2)


# ---------------------------------------------------------------------------------------------
# Warping error (Lai et al. 2018)
# ---------------------------------------------------------------------------------------------


def _lightness_u8_of_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 CIELAB L of an sRGB float image ``(H, W, 3)`` in [0, 1]."""
    return lightness_u8(color_np.rgb_hwc_to_lightness(rgb))


def reference_flow(
    ref_t: np.ndarray, ref_t1: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
) -> tuple[np.ndarray, np.ndarray]:
    """Flow from frame t to t+1 (``ref_t(x) ~ ref_t1(x + flow(x))``) and its non-occlusion mask, both
    at full resolution, from reference frames ``(H, W, 3)`` float in [0, 1] (DIS on L)."""
    dis = make_dis(preset)
    a, b = _lightness_u8_of_rgb(ref_t), _lightness_u8_of_rgb(ref_t1)
    flow = dense_flow(a, b, dis)
    mask = consistency_mask(flow, dense_flow(b, a, dis))
    return flow, mask


def pair_warping_error(out_t: np.ndarray, out_t1: np.ndarray, flow: np.ndarray, mask: np.ndarray) -> float:
    """Mean over ``mask`` of the squared RGB distance between ``out_t`` and ``out_t1`` warped onto t
    with ``flow`` (t -> t+1). Frames ``(H, W, 3)`` float in [0, 1]; 0.0 when the mask is empty."""
    n = int(mask.sum())
    if n == 0:
        return 0.0
    warped = warp(np.ascontiguousarray(out_t1, dtype=np.float32), flow)
    sq = ((np.asarray(out_t, dtype=np.float32) - warped) ** 2).sum(axis=2)
    return float(sq[mask].sum() / n)


def warping_error(
    outputs: Iterable[np.ndarray], references: Iterable[np.ndarray], preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
) -> float:
    """Lai et al.'s E_warp of a sequence of output frames against the reference frames that define
    the motion (pairs of ``(H, W, 3)`` float in [0, 1], streamed: only two frames are held).

    Pass the reference itself as ``outputs`` to get the reference's own warping error."""
    total, pairs = 0.0, 0
    prev_out = prev_ref = None
    for out, ref in zip(outputs, references, strict=True):
        if prev_ref is not None:
            flow, mask = reference_flow(prev_ref, ref, preset)
            total += pair_warping_error(prev_out, out, flow, mask)
            pairs += 1
        prev_out, prev_ref = out, ref
    if pairs == 0:
        raise ValueError("the warping error needs at least two frames")
    return total / pairs
