"""The film pipeline's stages and their plumbing: threads joined by bounded queues (``_Workers``),
decoding to CIELAB lightness, the engine with temporal smoothing of its ab, and composing RGB in
the encoder's pixel format. ``engines.video.film`` wires them together.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import cv2
import numpy as np

from engines import color_np
from engines.video.streams import (
    _frame_to_rgb,
    _Probe,
    _reason,
    decode_colorspace,
    rgb_to_encoder_frame,
    tag_encoder_frame,
)
from engines.video.temporal import ChromaSmoother

_JOIN_SECONDS = 30.0


@dataclass
class _Frame:
    """One video frame on its way through the stages; fields are filled and released stage by stage."""

    pts: int
    duration: int
    index: int = 0  # position in the output film (frames and bridges alike)
    # (1, H, W) float32 CIELAB L of the decoded frame; for 4:2:0 output, at the chroma planes'
    # resolution (H / 2, W / 2), with the full-size luma of its gray in ``gray_luma`` (``compose_yuv420``).
    l: np.ndarray | None = None
    gray_luma: np.ndarray | None = None  # (H, W) uint8, BT.709 limited range
    ab: np.ndarray | None = None  # (2, H, W) float32 chroma, predicted (and smoothed); any strides
    out: av.VideoFrame | None = None  # in the encoder's pixel format
    rgb_out: np.ndarray | None = None  # (H, W, 3) uint8 when composed in RGB (else ``out`` stands for it)
    state: dict | None = None  # on the last item of a segment: the smoother's state after it


@dataclass
class _Bridge:
    """A lost frame: the previous output frame is repeated with this timestamp."""

    pts: int
    duration: int
    index: int = 0
    state: dict | None = None


_END = object()


class _Stopped(Exception):
    """Raised inside a worker when another thread has failed."""


class _Workers:
    """Threads connected by bounded queues; the first exception anywhere stops all of them."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def spawn(self, name: str, fn: Callable, *args) -> None:
        thread = threading.Thread(target=self._run, args=(fn, args), name=f"colorize-video-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, fn: Callable, args: tuple) -> None:
        try:
            fn(*args)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                if self.error is not None and threading.current_thread() is threading.main_thread():
                    raise self.error
                raise _Stopped
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def shutdown(self) -> bool:
        """Stop and join every thread; False if one is still running after the grace period."""
        self.stop.set()
        deadline = time.monotonic() + _JOIN_SECONDS
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


@dataclass
class _ReadStats:
    decoded: int = 0
    failed_packets: int = 0
    unbridgeable: int = 0
    resized: int = 0
    out_of_order: int = 0
    stopped_early: str | None = None


def _read_stage(
    w: _Workers,
    inp,
    video_index: int,
    probe: _Probe,
    pix_fmt: str,
    skip: int,
    q_out: queue.Queue,
    stats: _ReadStats,
) -> None:
    """Demux and decode the video stream to lightness (``_FrameLightness``, for the encoder's
    ``pix_fmt``); emit frames and bridges, numbered, except the first ``skip`` (done by an earlier run:
    decoded, to keep the numbering, but not converted)."""
    vstream = inp.streams[video_index]
    lost: list[tuple[int, int]] = []  # (pts, duration) of frames that failed, not yet emitted
    last_pts: int | None = None
    last_duration = 1
    index = 0

    def put(item: _Frame | _Bridge) -> None:
        nonlocal index
        if index >= skip:
            item.index = index
            w.put(q_out, item)
        index += 1

    lightness = _FrameLightness(probe.width, probe.height, chroma_resolution=pix_fmt == "yuv420p")

    def emit_frame_or_bridge(pts: int | None, duration: int, frame: av.VideoFrame | None) -> None:
        nonlocal last_pts, last_duration
        if pts is None:
            pts = last_pts + last_duration if last_pts is not None else 0
        lost.sort()
        while lost and lost[0][0] < pts:
            q, d = lost.pop(0)
            if last_pts is None or q > last_pts:
                put(_Bridge(q, d))
                last_pts, last_duration = q, d or last_duration
        if last_pts is not None and pts <= last_pts:
            stats.out_of_order += 1
            return
        duration = duration or last_duration
        if index < skip or frame is None or frame.is_corrupt:
            put(_Bridge(pts, duration))  # (a frame an earlier run did: only counted, by put)
        else:
            if (frame.width, frame.height) != (probe.width, probe.height):
                stats.resized += 1
            l, gray_luma = lightness(frame)
            put(_Frame(pts, duration, l=l, gray_luma=gray_luma))
            stats.decoded += 1
        last_pts, last_duration = pts, duration

    def decode(packet: av.Packet) -> None:
        try:
            frames = packet.decode()
        except av.FFmpegError:
            stats.failed_packets += 1
            if packet.pts is not None and packet.size:
                lost.append((packet.pts, packet.duration or 0))
            else:
                stats.unbridgeable += 1
            return
        for frame in frames:
            emit_frame_or_bridge(frame.pts, frame.duration, frame)

    demuxer = inp.demux(vstream)
    while True:
        if w.stop.is_set():
            raise _Stopped
        try:
            packet = next(demuxer)
        except StopIteration:
            break
        except av.FFmpegError as exc:
            stats.stopped_early = _reason(exc)
            with contextlib.suppress(av.FFmpegError):
                for frame in vstream.decode(None):
                    emit_frame_or_bridge(frame.pts, frame.duration, frame)
            break
        decode(packet)
    lost.sort()
    for q, d in lost:
        if last_pts is None or q > last_pts:
            put(_Bridge(q, d or last_duration))
            last_pts = q
    w.put(q_out, _END)


def _analyse_stage(
    w: _Workers,
    predict_ab: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    segment_frames: int,
    smoother: ChromaSmoother | None,
    engine_interval: int,
    q_in: queue.Queue,
    q_out: queue.Queue,
) -> None:
    """Batches of frames -> the engine's ab, smoothed over time frame by frame; bridges pass through
    in order. A batch never spans two segments, and the last item of each segment carries the
    smoother's state after it, so a resumed run continues exactly where this one was. Each segment's
    batches grow 1, 2, 4, ... keyframes up to ``batch_size``: the first frame reaches the encoder after
    one engine call instead of a full batch's calls and smoothing (the encoder's threads would idle
    meanwhile), and a resumed segment is batched exactly as the uninterrupted run batched it.

    With smoothing, the engine sees only every ``engine_interval``-th frame of the film (by output
    index); the frames between take the previous prediction carried along the motion
    (``ChromaSmoother.step``), or the engine's own where the motion cannot carry it (the first
    frame, a scene cut, motion the checks reject). A batch holds ``batch_size`` frames for the engine."""
    pending: list = []
    frames: list[_Frame] = []
    keys = 0  # frames of ``frames`` for the engine
    ramp = 1  # keyframes that fill the batch being gathered (see the docstring)
    interval = engine_interval if smoother is not None else 1

    def predict(batch: list[_Frame]) -> np.ndarray:
        l = np.stack([f.l for f in batch])  # (N, 1, H, W) in [0, 100]
        ab = predict_ab(l)
        if not isinstance(ab, np.ndarray) or ab.shape != (l.shape[0], 2, *l.shape[-2:]):
            got = tuple(ab.shape) if isinstance(ab, np.ndarray) else type(ab).__name__
            raise ValueError(f"predict_ab returned {got}, expected {(l.shape[0], 2, *l.shape[-2:])}")
        return ab.astype(np.float32, copy=False)

    def hwc(ab: np.ndarray) -> np.ndarray:
        # OpenCV works channels-last: one transposing copy per batch (none when the engine gave a
        # channels-last view), and back as a free view.
        return np.ascontiguousarray(ab.transpose(0, 2, 3, 1))  # (N, H, W, 2)

    def predict_one(f: _Frame) -> np.ndarray:  # a skipped frame whose motion cannot be followed
        return hwc(predict([f]))[0]

    def flush() -> None:
        nonlocal keys
        keys = 0
        if frames:
            key_frames = [f for f in frames if f.index % interval == 0]
            ab = predict(key_frames) if key_frames else None
            if smoother is None:
                for i, f in enumerate(frames):
                    f.ab = ab[i]
            else:
                key_ab = iter(hwc(ab)) if key_frames else iter(())
                for f in frames:
                    pred = next(key_ab) if f.index % interval == 0 else functools.partial(predict_one, f)
                    f.ab = smoother.step(f.l[0], pred).transpose(2, 0, 1)
        if pending and pending[-1].index % segment_frames == segment_frames - 1:
            pending[-1].state = smoother.get_state() if smoother is not None else {}
        for item in pending:
            w.put(q_out, item)
        pending.clear()
        frames.clear()

    while True:
        item = w.get(q_in)
        if item is _END:
            flush()
            w.put(q_out, _END)
            return
        pending.append(item)
        if isinstance(item, _Frame):
            frames.append(item)
            keys += item.index % interval == 0
        segment_end = item.index % segment_frames == segment_frames - 1
        if keys >= ramp or segment_end:
            flush()
            ramp = 1 if segment_end else min(batch_size, 2 * ramp)


def lightness_of_rgb_u8(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L ``(1, H, W)`` float32 of an 8-bit sRGB frame ``(H, W, 3)`` (``color_np.rgb_u8_hwc_to_lightness``)."""
    return color_np.rgb_u8_hwc_to_lightness(rgb)[None]


# 8-bit planar YUV whose chroma can be checked for neutrality plane by plane.
_PLANAR_YUV = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p"})


_NEUTRAL_CHROMA = 128


def _plane_u8(plane) -> np.ndarray:
    """An 8-bit plane as a ``(height, width)`` view (rows keep the decoder's padding as their stride)."""
    return np.frombuffer(plane, np.uint8, plane.height * plane.line_size).reshape(plane.height, -1)[:, : plane.width]


class _FrameLightness:
    """CIELAB L ``(1, H, W)`` of decoded frames, at the film's size.

    Black-and-white sources (8-bit planar YUV whose every chroma sample is neutral) skip RGB: their
    RGB conversion is gray with each level a function of Y alone, so L is one table lookup on the Y
    plane. The table is learnt from swscale itself, converting a frame of every Y level with the
    same format, size, matrix and range as the RGB path would, so the L is the RGB path's exactly;
    should that conversion not be a per-level gray map, every frame takes the RGB path.

    For such frames it also gives the luma the output's gray would have (BT.709 limited range, as
    ``rgb_to_encoder_frame`` writes it), by a second table from the same Y plane.

    ``chroma_resolution`` (4:2:0 output, even sizes): L comes averaged over 2x2 blocks, the resolution
    the engine, the smoothing and the compose then work at, and every frame has its gray's luma (from
    its composed gray when it is not a black-and-white frame); see ``compose_yuv420``.
    """

    def __init__(self, width: int, height: int, chroma_resolution: bool = False):
        self.width, self.height = width, height
        self.chroma_resolution = chroma_resolution
        self._tables: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}

    def __call__(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray | None]:
        """``(L (1, H, W), gray luma (H, W) uint8 or None)``; without ``chroma_resolution``, the luma for
        black-and-white frames only."""
        tables = self._tables_for(frame)
        if tables is None:
            l = color_np.rgb_u8_hwc_to_lightness(_frame_to_rgb(frame, self.width, self.height))
            gray_luma = gray_luma_of_lightness(l) if self.chroma_resolution else None
        else:
            y = _plane_u8(frame.planes[0])
            l, gray_luma = cv2.LUT(y, tables[0]), cv2.LUT(y, tables[1])
        if self.chroma_resolution:
            l = cv2.resize(l, (self.width // 2, self.height // 2), interpolation=cv2.INTER_AREA)
        return l[None], gray_luma

    def _tables_for(self, frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray] | None:
        """The (L, output luma) tables of a black-and-white frame's Y levels, or None for other frames."""
        name = frame.format.name
        if name not in _PLANAR_YUV or (frame.width, frame.height) != (self.width, self.height):
            return None
        for plane in frame.planes[1:3]:
            low, high, _, _ = cv2.minMaxLoc(_plane_u8(plane))
            if low != _NEUTRAL_CHROMA or high != _NEUTRAL_CHROMA:
                return None
        key = (name, *decode_colorspace(frame))
        if key not in self._tables:
            self._tables[key] = self._learn_tables(name, frame)
        return self._tables[key]

    def _learn_tables(self, name: str, like: av.VideoFrame) -> tuple[np.ndarray, np.ndarray] | None:
        probe = av.VideoFrame(self.width, self.height, name)
        rows, cols = np.mgrid[: self.height, : self.width]
        luma = ((cols + 37 * rows) % 256).astype(np.uint8)  # every level, in every column phase
        _plane_u8(probe.planes[0])[:] = luma
        for plane in probe.planes[1:3]:
            _plane_u8(plane)[:] = _NEUTRAL_CHROMA
        matrix, rng = decode_colorspace(like)
        rgb = probe.to_ndarray(format="rgb24", threads=1, src_colorspace=matrix, src_color_range=rng)
        levels = np.zeros(256, np.uint8)
        levels[luma.ravel()] = rgb[..., 0].ravel()
        if not ((rgb == rgb[..., :1]).all() and np.array_equal(levels[luma], rgb[..., 0])):
            return None
        return color_np.gray_u8_lightness_table(levels), levels_to_output_luma()[levels]


def gray_luma_of_lightness(l: np.ndarray) -> np.ndarray:
    """L float32 (any shape) -> the luma (uint8, BT.709 limited range) of its gray: the gray's 8-bit level
    (``color_np.gray_u8_of_lightness``, two table lookups) through the encoder's luma of each level. The
    luma a black-and-white frame's table gives."""
    return cv2.LUT(color_np.gray_u8_of_lightness(l), levels_to_output_luma())


@functools.cache
def levels_to_output_luma() -> np.ndarray:
    """(256,) uint8: the luma ``rgb_to_encoder_frame`` gives a gray of each sRGB level (made once: colour
    sources look it up every frame)."""
    ramp = np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, 2), 2, 0)  # (2, 256, 3)
    table = _plane_u8(rgb_to_encoder_frame(ramp, "yuv444p").planes[0])[0].copy()
    table.flags.writeable = False  # shared by every caller
    return table


def compose_rgb(l: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """L ``(1, H, W)`` + ab ``(2, H, W)`` (any strides; channels-last is free) -> 8-bit sRGB ``(H, W, 3)``
    with L kept: ``lab_to_rgb_keep_lightness`` rounded to uint8 (``color_np.lab_hwc_to_rgb_u8_keep_lightness``)."""
    return color_np.lab_hwc_to_rgb_u8_keep_lightness(l[0], ab.transpose(1, 2, 0))


def compose_yuv420(l_half: np.ndarray, ab_half: np.ndarray, gray_luma: np.ndarray) -> av.VideoFrame:
    """L ``(1, H / 2, W / 2)`` averaged over 2x2 blocks + ab at that size + the gray's full-size luma
    ``(H, W)`` -> a yuv420p frame (BT.709 limited range): colour composed at the chroma planes'
    resolution only.

    4:2:0 keeps one chroma sample per 2x2 block, so RGB at full size (``compose_rgb``, then swscale)
    computes four times the colour that the file can hold, and the engine's ab upsampled to full size
    and smoothed there is averaged away again. Here each block is composed (L kept, as
    ``compose_rgb``) with its ab; its U and V are those of its colour, and its luma shift (colour's luma
    minus its gray's, ``gray_luma_of_lightness``) is upsampled onto the full-size gray luma. So a pixel
    given no colour keeps its gray luma (but for float rounding at a level boundary: one level, a few
    pixels in ten thousand), detail stays at full resolution, and the colour work runs on a quarter of
    the pixels; the difference from the RGB path is bounded in tests.
    """
    h, w = gray_luma.shape
    l_half = np.ascontiguousarray(l_half[0])
    colour = color_np.lab_hwc_to_rgb_u8_keep_lightness(l_half, np.ascontiguousarray(ab_half.transpose(1, 2, 0)))
    planes = [_plane_u8(p) for p in rgb_to_encoder_frame(colour, "yuv444p").planes]
    # The gray's luma from two table lookups, not a second compose (a third of the stage's time):
    # where ab is zero, the two agree but for float rounding at a level boundary (one level, a few
    # pixels in ten thousand; tests/test_video.py).
    shift = cv2.subtract(planes[0], gray_luma_of_lightness(l_half), dtype=cv2.CV_16S)
    luma = cv2.add(gray_luma, cv2.resize(shift, (w, h), interpolation=cv2.INTER_LINEAR), dtype=cv2.CV_8U)
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, values in zip(frame.planes, (luma, planes[1], planes[2])):
        _plane_u8(plane)[:] = values
    return tag_encoder_frame(frame)


def _compose_stage(w: _Workers, pix_fmt: str, q_in: queue.Queue, q_out: queue.Queue) -> None:
    """Recombine L and ab into the encoder's format: into yuv420p at chroma resolution
    (``compose_yuv420``), else into RGB and then converted."""
    while True:
        item = w.get(q_in)
        if isinstance(item, _Frame):
            if pix_fmt == "yuv420p":  # L and ab at chroma resolution (``_FrameLightness``)
                item.out = compose_yuv420(item.l, item.ab, item.gray_luma)
            else:
                item.rgb_out = compose_rgb(item.l, item.ab)
                item.out = rgb_to_encoder_frame(item.rgb_out, pix_fmt)
            item.l = item.ab = item.gray_luma = None
        w.put(q_out, item)
        if item is _END:
            return
