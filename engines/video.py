"""Colourise a film: a streaming PyAV pipeline with motion-guided temporal smoothing of the chroma.

``colorize_video(src, dst, predict_ab)`` reads anything FFmpeg demuxes and writes MP4, Matroska or
QuickTime (by ``dst``'s suffix). The first video stream is colourised; every other stream is copied.

Data flow (four threads, bounded queues, so memory does not grow with the film's length)::

    read:    demux -> decode -> RGB (explicit matrix and range) -> CIELAB L ---------------> q1
    analyse: batches of ``batch_size`` frames -> predict_ab -> temporal smoothing of ab ---> q2
    compose: L + ab -> RGB (L kept) -> the encoder's YUV ---------------------------------> q3
    main:    encode -> mux (copied streams' packets are muxed as they arrive, in file order)

Packets of the copied streams travel through the same queues as the video frames, so they reach the
muxer in roughly the input's order; FFmpeg's interleaver does the rest. An exception in any thread
sets a stop flag that every blocking queue operation checks, the main thread re-raises it, and the
temporary output is removed.

Decisions
---------
- Timing: each output frame carries its input frame's pts, in the input stream's time base, which is
  also the encoder's and (where the muxer keeps it) the output stream's: MP4 and MOV keep it, so
  timestamps are bit-identical; Matroska always stores milliseconds, so there they are rounded to the
  millisecond (as any Matroska muxer would). The average frame rate (a rational, e.g. 30000/1001) is
  set on the encoder and the stream, frame durations are passed on, so the container's duration and
  a variable frame rate survive. The display matrix (rotation, flips) is copied from the first
  decoded frame's side data, or from an old-style ``rotate`` tag.
- Colour: decoded frames are converted to RGB by swscale with the matrix and range the stream
  declares (BT.601, BT.709, SMPTE 240M, BT.2020; full or limited range). Untagged streams get what
  players assume: BT.709 at HD sizes (width >= 1280 or height > 576), BT.601 below; limited range
  except for the ``yuvj*`` formats. The output is BT.709 (matrix, primaries and transfer tagged in
  the stream), limited range, converted explicitly, so players need not guess.
- Pixel format: yuv420p for even sizes (what every player decodes). 4:2:0 cannot hold an odd width or
  height, so odd sizes are encoded as yuv444p at their exact size (H.264 High 4:4:4 / HEVC RExt /
  VP9 profile 1) rather than padded or cropped; FFmpeg-based players (mpv, VLC, browsers through
  FFmpeg) play it, some hardware decoders do not, and the report says so.
- Lightness: the output's CIELAB L is the input's (up to 8-bit and codec rounding); only ab comes from
  the engine, and smoothing touches only ab (see ``engines.temporal``).
- Corrupt input: a packet the decoder rejects, or a frame it flags as damaged, is replaced by a copy of
  the previous output frame with the lost frame's timestamp, so frame count and timing stay intact
  (``VideoReport.corrupt_frames_bridged``). Frames a decoder drops *without* reporting an error
  cannot be told apart from packets that legitimately make no picture, so they are not invented.
  Only a video in which no frame decodes is an error.
- Truncated input: an MP4/MOV whose index (moov) is missing cannot be opened (``VideoError``). A
  stream that breaks off (truncated Matroska, MPEG-TS, or an MP4 whose index points past the end) is
  colourised up to the last decodable frame and the report's notes say where it stopped: for films a
  usable partial result beats none, and the caller sees the note.
- Other streams: copied packet for packet (bytes and timestamps untouched), except where the output
  container cannot hold the codec: audio then becomes AAC, text subtitles become mov_text (MP4/MOV)
  or ASS (Matroska); PCM audio in MP4 also becomes AAC (FFmpeg can write ISO/IEC 23003-5 PCM in MP4,
  but few players read it; MOV and Matroska hold PCM and keep it). Streams that can be neither copied
  nor converted (bitmap subtitles, data, attachments in MP4) are dropped, and the report names them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from av.video.reformatter import ColorRange, Colorspace

from engines import color, runtime
from engines.formats import VIDEO_OUTPUT_FORMATS as OUTPUT_FORMATS
from engines.formats import VIDEO_SUFFIXES
from engines.temporal import DEFAULT_SCENE_CUT_THRESHOLD, ChromaSmoother

# Still images, and GIF, which the photo path handles (its first frame).
_PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif"})

# AVColorSpace / AVColorRange / AVColorPrimaries / AVColorTransferCharacteristic values.
_AVCOL_SPC = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601, 6: Colorspace.ITU601,
              7: Colorspace.SMPTE240M, 9: Colorspace.BT2020, 10: Colorspace.BT2020}  # fmt: skip
_AVCOL_SPC_BT709 = 1
_AVCOL_PRI_BT709 = 1
_AVCOL_TRC_BT709 = 1

# MP4/MOV: index at the front (plays while downloading); B-frame reordering written as negative
# composition offsets instead of an edit list, with which FFmpeg's muxer can round the video track's
# duration down by a fraction of a frame.
_MUXER_OPTIONS = {
    "mp4": {"movflags": "+faststart+negative_cts_offsets"},
    "mov": {"movflags": "+faststart+negative_cts_offsets"},
}
# Items (frames and interleaved packets) a queue holds beyond one batch. Together with the batch cap
# below this bounds the frames in flight, and so memory, whatever the film's length.
_QUEUE_SLACK = 4
# A batch holds at most this many pixels (8 frames of 854x480, 4 of 1080p, 1 of 4K): the engine's
# full-resolution intermediates grow with it.
_BATCH_PIXELS = 8_000_000
_JOIN_SECONDS = 30.0
_AUDIO_FALLBACK = "aac"
_TEXT_SUBTITLES = frozenset({"subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text", "microdvd", "subviewer", "jacosub", "realtext", "sami", "stl", "pjs", "mpl2", "vplayer"})  # fmt: skip
# A minimal ASS header for subtitle encoders when the source decoder offers none.
_ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\nScaledBorderAndShadow: yes\n\n"
    b"[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
    b"BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, "
    b"Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\nStyle: Default,Arial,16,&Hffffff,&Hffffff,"
    b"&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,1\n\n[Events]\nFormat: Layer, Start, End, Style, Name, "
    b"MarginL, MarginR, MarginV, Effect, Text\n"
)


class VideoError(Exception):
    """A video cannot be read or written. One human-readable line without the path (the caller
    prefixes the file name), e.g. ``'no video stream'``."""


@dataclass(frozen=True)
class VideoOptions:
    """How to write the film.

    codec: FFmpeg encoder for the video stream (libx264, libx265, libvpx-vp9, mpeg4, ... where built).
    crf: constant-quality setting for encoders that have one (x264, x265, VP9, SVT-AV1); lower is better.
    smoothing: "flow" (motion-guided temporal smoothing of the chroma) or "off" (raw per-frame output).
    strength: 0..1, weight of the motion-compensated previous chroma (0.6 halves i.i.d. flicker).
    batch_size: frames per engine call (at most 8 megapixels per call: fewer frames for large sizes).
    scene_cut_threshold: lightness-histogram distance above which smoothing restarts (see
        ``engines.temporal``; 0.18, calibrated on the dev clips).
    """

    codec: str = "libx264"
    crf: int = 18
    smoothing: str = "flow"
    strength: float = 0.6
    batch_size: int = 8
    scene_cut_threshold: float = DEFAULT_SCENE_CUT_THRESHOLD

    def __post_init__(self) -> None:
        if self.smoothing not in ("off", "flow"):
            raise ValueError(f"smoothing must be 'off' or 'flow', got {self.smoothing!r}")
        if not 0 <= self.strength <= 1:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.crf <= 63:
            raise ValueError(f"crf must be in 0..63, got {self.crf}")
        if not 0 <= self.scene_cut_threshold <= 1:
            raise ValueError(f"scene_cut_threshold must be in [0, 1], got {self.scene_cut_threshold}")


@dataclass
class VideoReport:
    """What ``colorize_video`` did. Stream descriptions are human text, e.g. ``'audio 1 (aac)'``."""

    frames: int = 0  # video frames written (decoded + bridged)
    corrupt_frames_bridged: int = 0
    seconds: float = 0.0
    copied_streams: list[str] = field(default_factory=list)
    reencoded_streams: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    scene_cuts: int = 0


# ---------------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------------


def is_video(path: Path) -> bool:
    """True when ``path`` looks like a film: a known video suffix whose content FFmpeg opens with a
    video stream, or any other file in which FFmpeg finds a video stream of more than one frame.

    Still images (JPEG, PNG, TIFF, WebP, BMP by suffix or by content) are never video. Cheap: probes
    the container header and decodes at most two frames for formats that do not store a frame count.
    Never raises; unreadable files are not video.
    """
    path = Path(path)
    if path.suffix.lower() in _PHOTO_SUFFIXES:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
        if not head or _looks_like_still_image(head):
            return False
        with av.open(str(path)) as container:
            stream = _pick_video_stream(container)
            if stream is None:
                return False
            if path.suffix.lower() in VIDEO_SUFFIXES or stream.frames > 1:
                return True
            if container.format.name.endswith("_pipe") or container.format.name == "image2":
                return False
            for index, _ in enumerate(container.decode(stream)):
                if index >= 1:
                    return True
            return False
    except (OSError, av.FFmpegError, ValueError):
        return False


def _looks_like_still_image(head: bytes) -> bool:
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )


def _pick_video_stream(container: av.container.InputContainer):
    """The first video stream that is not an attached picture (cover art), or None."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


@dataclass
class _Probe:
    """What the first decodable frame of the video stream says."""

    index: int
    width: int
    height: int
    display_matrix: tuple[int, ...] | None


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise VideoError("file not found") from exc
    except OSError as exc:
        raise VideoError(f"cannot read: {_os_reason(exc)}") from exc
    if path.is_dir():
        raise VideoError("is a directory")
    if size == 0:
        raise VideoError("empty file")
    try:
        return av.open(str(path), "r")
    except PermissionError as exc:
        raise VideoError("permission denied") from exc
    except av.FFmpegError as exc:
        raise VideoError("not a video, or truncated or corrupt (FFmpeg cannot open it)") from exc


def _probe(path: Path) -> _Probe:
    with _open_input(path) as container:
        stream = _pick_video_stream(container)
        if stream is None:
            raise VideoError("no video stream")
        first = None
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    continue
                if frames:
                    first = frames[0]
                    break
        except av.FFmpegError:
            pass  # a broken file: no first frame
        if first is None:
            raise VideoError("no decodable video frames")
        matrix = None
        for side in first.side_data:
            if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX and len(bytes(side)) == 36:
                matrix = struct.unpack("<9i", bytes(side))
        if matrix is None and stream.metadata.get("rotate"):
            with contextlib.suppress(ValueError):
                matrix = _rotation_matrix(float(stream.metadata["rotate"]))
        return _Probe(stream.index, first.width, first.height, matrix)


def _rotation_matrix(clockwise_degrees: float) -> tuple[int, ...] | None:
    """The display matrix of an old-style ``rotate`` tag (clockwise degrees), 16.16 fixed point."""
    quarter = round(clockwise_degrees / 90) % 4
    if quarter == 0:
        return None
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][quarter]
    one = 1 << 16
    # FFmpeg's av_display_rotation_set(-angle): [cos, -sin, 0; sin, cos, 0; 0, 0, 1<<30] with angle
    # counter-clockwise.
    return (c * one, s * one, 0, -s * one, c * one, 0, 0, 0, 1 << 30)


# ---------------------------------------------------------------------------------------------
# Output streams
# ---------------------------------------------------------------------------------------------


def encoder_pixel_format(codec: str, width: int, height: int) -> str:
    """yuv420p for even sizes; yuv444p (exact size) for odd ones where the encoder can; else the
    encoder's first format (which may then refuse the size)."""
    formats = [f.name for f in (av.Codec(codec, "w").video_formats or ())]
    if width % 2 == 0 and height % 2 == 0 and (not formats or "yuv420p" in formats):
        return "yuv420p"
    if "yuv444p" in formats:
        return "yuv444p"
    return formats[0] if formats else "yuv420p"


def encoder_options(codec: str, crf: int) -> dict[str, str]:
    """Private encoder options for a constant-quality encode at ``crf``."""
    ctx = av.CodecContext.create(codec, "w")
    names = {o.name for o in ctx.supported_options.private}
    options: dict[str, str] = {}
    if "crf" in names:
        options["crf"] = str(crf)
        if codec in ("libvpx-vp9", "libvpx"):
            options["b"] = "0"  # constant quality, no bitrate cap
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    return options


def add_video_encoder(
    out: av.container.OutputContainer,
    codec: str,
    crf: int,
    width: int,
    height: int,
    time_base: Fraction,
    rate: Fraction | None,
    sample_aspect_ratio: Fraction | None = None,
):
    """Add the colourised video stream, set up as the pipeline encodes it (shared with the benchmark's
    plain re-encode so that both measure the same encoder settings). Returns the stream."""
    stream = out.add_stream(codec, rate=rate) if rate else out.add_stream(codec)
    stream.width, stream.height = width, height
    stream.pix_fmt = encoder_pixel_format(codec, width, height)
    stream.time_base = time_base
    ctx = stream.codec_context
    ctx.time_base = time_base
    ctx.thread_type = "AUTO"  # frame threads for x264/x265 as the ffmpeg CLI uses (PyAV's default is slice)
    if sample_aspect_ratio:
        ctx.sample_aspect_ratio = sample_aspect_ratio
    ctx.colorspace = _AVCOL_SPC_BT709
    ctx.color_range = ColorRange.MPEG
    ctx.color_primaries = _AVCOL_PRI_BT709
    ctx.color_trc = _AVCOL_TRC_BT709
    stream.options = encoder_options(codec, crf)
    if codec == "libx265" and out.format.name in ("mp4", "mov"):
        stream.codec_tag = "hvc1"  # what Apple's players require for HEVC in MP4/MOV
    if "crf" not in stream.options:
        # No constant-rate factor (mpeg4, ...): a fixed quantiser of comparable quality instead.
        with contextlib.suppress(AttributeError, ValueError):
            ctx.qscale = max(2, min(31, round(crf / 6) + 1))
    return stream


def rgb_to_encoder_frame(rgb_u8: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """RGB ``(H, W, 3)`` uint8 -> a frame in ``pix_fmt``, BT.709 limited range, tagged."""
    frame = av.VideoFrame.from_ndarray(rgb_u8, format="rgb24")
    return frame.reformat(
        format=pix_fmt,
        dst_colorspace=Colorspace.ITU709,
        dst_color_range=ColorRange.MPEG,
        dst_color_trc=_AVCOL_TRC_BT709,
        dst_color_primaries=_AVCOL_PRI_BT709,
        threads=1,
    )


def _describe(stream) -> str:
    ctx = stream.codec_context
    name = ctx.name if ctx is not None else getattr(getattr(stream, "codec", None), "name", None) or "unknown codec"
    return f"{stream.type} {stream.index} ({name})"


@dataclass
class _Route:
    """How one input stream's packets reach the output."""

    out: object  # output stream
    transcode: bool  # decode + encode (else copy packets)


def _plan_streams(
    inp, out, fmt: str, video_index: int, add_video: Callable[[], object], report: VideoReport
) -> dict[int, _Route]:
    """Create the output streams in the input's order: ``add_video()`` for the colourised one, a copy
    (or a conversion) for every other stream."""
    routes: dict[int, _Route] = {}
    label = {"mp4": "mp4", "mov": "mov", "matroska": "mkv"}[fmt]
    for stream in inp.streams:
        if stream.index == video_index:
            add_video()
            continue
        desc = _describe(stream)
        name = stream.codec_context.name if stream.codec_context is not None else ""
        refuse = fmt == "mp4" and name.startswith("pcm_")  # see the module docstring
        if not refuse:
            try:
                ostream = out.add_stream_from_template(stream)
            except (ValueError, av.FFmpegError):
                pass
            else:
                _copy_metadata(stream, ostream)
                routes[stream.index] = _Route(ostream, transcode=False)
                report.copied_streams.append(desc)
                continue
        why = f"{label} cannot hold {name or stream.type}" if not refuse else "few players read PCM in mp4"
        target = None
        if stream.type == "audio":
            target = _AUDIO_FALLBACK
        elif stream.type == "subtitle" and name in _TEXT_SUBTITLES:
            target = "ass" if fmt == "matroska" else "mov_text"
        if target is None:
            report.notes.append(f"{desc} dropped: {label} cannot hold it and it cannot be converted")
            continue
        try:
            ostream = _add_transcoded_stream(out, stream, target)
        except (ValueError, av.FFmpegError) as exc:
            report.notes.append(f"{desc} dropped: {why}, and conversion to {target} failed ({_reason(exc)})")
            continue
        _copy_metadata(stream, ostream)
        routes[stream.index] = _Route(ostream, transcode=True)
        report.reencoded_streams.append(f"{stream.type} {stream.index} ({name} -> {target}): {why}")
    return routes


def _add_transcoded_stream(out, stream, target: str):
    if stream.type == "audio":
        src = stream.codec_context
        ostream = out.add_stream(target, rate=src.sample_rate)
        ostream.codec_context.layout = src.layout
        ostream.time_base = Fraction(1, src.sample_rate)
        ostream.codec_context.time_base = Fraction(1, src.sample_rate)
        ostream.bit_rate = min(96_000 * src.layout.nb_channels, 512_000)
        return ostream
    ostream = out.add_stream(target)
    ostream.codec_context.subtitle_header = stream.codec_context.subtitle_header or _ASS_HEADER
    ostream.time_base = stream.time_base
    ostream.codec_context.time_base = stream.time_base
    return ostream


def _copy_metadata(src, dst) -> None:
    for key in ("language", "title", "handler_name"):
        if key in src.metadata:
            dst.metadata[key] = src.metadata[key]


# ---------------------------------------------------------------------------------------------
# Pipeline items and plumbing
# ---------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """One video frame on its way through the stages; fields are filled and released stage by stage."""

    pts: int
    duration: int
    l: torch.Tensor | None = None  # (1, H, W) float32 CIELAB L of the decoded frame
    ab: torch.Tensor | None = None  # (2, H, W) float32 chroma, predicted (and smoothed); any strides
    out: av.VideoFrame | None = None  # in the encoder's pixel format
    rgb_out: np.ndarray | None = None  # (H, W, 3) uint8, kept for bridging


@dataclass
class _Bridge:
    """A lost frame: the previous output frame is repeated with this timestamp."""

    pts: int
    duration: int


@dataclass
class _Copy:
    """A packet of another stream, passed to the muxer in order."""

    packet: av.Packet


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


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def decode_colorspace(frame: av.VideoFrame) -> tuple[Colorspace | None, ColorRange | None]:
    """The swscale matrix and range of ``frame``'s samples, as declared or as players assume for
    untagged streams (None, None for RGB and gray formats). Pass them to ``to_ndarray``/``reformat``."""
    fmt = frame.format
    if fmt.is_rgb or fmt.name in ("gray", "gray10le", "gray12le", "gray16le", "pal8"):
        return None, None
    matrix = _AVCOL_SPC.get(int(frame.colorspace))
    if matrix is None:  # unspecified: what players assume
        matrix = Colorspace.ITU709 if frame.width >= 1280 or frame.height > 576 else Colorspace.ITU601
    if int(frame.color_range) == ColorRange.JPEG or fmt.name.startswith("yuvj"):
        rng = ColorRange.JPEG
    else:
        rng = ColorRange.MPEG
    return matrix, rng


def _frame_to_rgb(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    matrix, rng = decode_colorspace(frame)
    kwargs = {"src_colorspace": matrix, "src_color_range": rng} if matrix is not None else {}
    if (frame.width, frame.height) != (width, height):
        kwargs.update(width=width, height=height, interpolation="BICUBIC")
    return frame.to_ndarray(format="rgb24", threads=1, **kwargs)


def sample_frames(path: Path, per_second: float) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame index, rgb_u8 (H, W, 3))`` for about ``per_second`` frames per second of a film:
    the first frame, then the first one at or after each further ``1 / per_second`` seconds of its
    timestamps. For training sets, where neighbouring frames are near-duplicates. Packets that fail to
    decode are skipped; raises ``VideoError`` when the file cannot be opened or has no video stream."""
    with _open_input(Path(path)) as container:
        stream = _pick_video_stream(container)
        if stream is None:
            raise VideoError("no video stream")
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        index, due = 0, None
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue
            for frame in frames:
                t = frame.time if frame.time is not None else index / rate
                if due is None or t >= due - 1e-6:
                    due = t + 1 / per_second
                    yield index, _frame_to_rgb(frame, frame.width, frame.height)
                index += 1


@dataclass
class _ReadStats:
    decoded: int = 0
    failed_packets: int = 0
    unbridgeable: int = 0
    resized: int = 0
    out_of_order: int = 0
    stopped_early: str | None = None


def _read_stage(
    w: _Workers, inp, video_index: int, routes: dict[int, _Route], probe: _Probe, q_out: queue.Queue, stats: _ReadStats
) -> None:
    """Demux everything; decode the video stream to RGB; emit frames, bridges and copied packets."""
    vstream = inp.streams[video_index]
    wanted = [vstream] + [inp.streams[i] for i in routes]
    lost: list[tuple[int, int]] = []  # (pts, duration) of frames that failed, not yet emitted
    last_pts: int | None = None
    last_duration = 1
    lightness = _FrameLightness(probe.width, probe.height)

    def emit_frame_or_bridge(pts: int | None, duration: int, frame: av.VideoFrame | None) -> None:
        nonlocal last_pts, last_duration
        if pts is None:
            pts = last_pts + last_duration if last_pts is not None else 0
        lost.sort()
        while lost and lost[0][0] < pts:
            q, d = lost.pop(0)
            if last_pts is None or q > last_pts:
                w.put(q_out, _Bridge(q, d))
                last_pts, last_duration = q, d or last_duration
        if last_pts is not None and pts <= last_pts:
            stats.out_of_order += 1
            return
        duration = duration or last_duration
        if frame is None or frame.is_corrupt:
            w.put(q_out, _Bridge(pts, duration))
        else:
            if (frame.width, frame.height) != (probe.width, probe.height):
                stats.resized += 1
            w.put(q_out, _Frame(pts, duration, l=lightness(frame)))
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

    demuxer = inp.demux(wanted)
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
        if packet.stream.index == video_index:
            decode(packet)
        elif packet.size or routes[packet.stream.index].transcode:
            w.put(q_out, _Copy(packet))
    lost.sort()
    for q, d in lost:
        if last_pts is None or q > last_pts:
            w.put(q_out, _Bridge(q, d or last_duration))
            last_pts = q
    w.put(q_out, _END)


def _analyse_stage(
    w: _Workers,
    predict_ab: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    smoother: ChromaSmoother | None,
    q_in: queue.Queue,
    q_out: queue.Queue,
) -> None:
    """Batches of frames -> the engine's ab, smoothed over time frame by frame; other items pass
    through in order."""
    pending: list = []
    frames: list[_Frame] = []

    def flush() -> None:
        if frames:
            l = torch.stack([f.l for f in frames])  # (N, 1, H, W) in [0, 100]
            ab = predict_ab(l)
            if not isinstance(ab, torch.Tensor) or ab.shape != (l.shape[0], 2, *l.shape[-2:]):
                got = tuple(ab.shape) if isinstance(ab, torch.Tensor) else type(ab).__name__
                raise ValueError(f"predict_ab returned {got}, expected {(l.shape[0], 2, *l.shape[-2:])}")
            ab = ab.detach().float().cpu()
            if smoother is None:
                for i, f in enumerate(frames):
                    f.ab = ab[i]
            else:
                # OpenCV works channels-last: one transposing copy per batch, and back as a free view.
                ab_hwc = ab.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 2)
                for i, f in enumerate(frames):
                    f.ab = torch.from_numpy(smoother.step(f.l[0].numpy(), ab_hwc[i])).permute(2, 0, 1)
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
            if len(frames) >= batch_size:
                flush()


def lightness_of_rgb_u8(rgb: np.ndarray) -> torch.Tensor:
    """CIELAB L ``(1, H, W)`` float32 of an 8-bit sRGB frame ``(H, W, 3)`` (``color.rgb_u8_hwc_to_lightness``)."""
    return torch.from_numpy(color.rgb_u8_hwc_to_lightness(rgb))[None]


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
    """

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self._tables: dict[tuple, np.ndarray | None] = {}

    def __call__(self, frame: av.VideoFrame) -> torch.Tensor:
        l = self._from_luma(frame)
        if l is None:
            l = color.rgb_u8_hwc_to_lightness(_frame_to_rgb(frame, self.width, self.height))
        return torch.from_numpy(l)[None]

    def _from_luma(self, frame: av.VideoFrame) -> np.ndarray | None:
        name = frame.format.name
        if name not in _PLANAR_YUV or (frame.width, frame.height) != (self.width, self.height):
            return None
        for plane in frame.planes[1:3]:
            low, high, _, _ = cv2.minMaxLoc(_plane_u8(plane))
            if low != _NEUTRAL_CHROMA or high != _NEUTRAL_CHROMA:
                return None
        key = (name, *decode_colorspace(frame))
        if key not in self._tables:
            self._tables[key] = self._learn_table(name, frame)
        table = self._tables[key]
        return None if table is None else cv2.LUT(_plane_u8(frame.planes[0]), table)

    def _learn_table(self, name: str, like: av.VideoFrame) -> np.ndarray | None:
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
        return color.gray_u8_lightness_table(levels)


def compose_rgb(l: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
    """L ``(1, H, W)`` + ab ``(2, H, W)`` (any strides; channels-last is free) -> 8-bit sRGB ``(H, W, 3)``
    with L kept: ``lab_to_rgb_keep_lightness`` rounded to uint8 (``color.lab_hwc_to_rgb_u8_keep_lightness``)."""
    return color.lab_hwc_to_rgb_u8_keep_lightness(l[0].numpy(), ab.permute(1, 2, 0).numpy())


def _compose_stage(w: _Workers, pix_fmt: str, q_in: queue.Queue, q_out: queue.Queue) -> None:
    """Recombine L and ab into RGB, convert to the encoder's format."""
    while True:
        item = w.get(q_in)
        if isinstance(item, _Frame):
            rgb_u8 = compose_rgb(item.l, item.ab)
            item.l = item.ab = None
            item.out = rgb_to_encoder_frame(rgb_u8, pix_fmt)
            item.rgb_out = rgb_u8
        w.put(q_out, item)
        if item is _END:
            return


# ---------------------------------------------------------------------------------------------
# The whole thing
# ---------------------------------------------------------------------------------------------


def colorize_video(
    src: Path,
    dst: Path,
    predict_ab: Callable[[torch.Tensor], torch.Tensor],
    options: VideoOptions = VideoOptions(),
    progress: Callable[[int, int | None], None] | None = None,
) -> VideoReport:
    """Colourise the film ``src`` into ``dst`` (.mp4, .mkv or .mov); see the module docstring.

    ``predict_ab`` maps full-resolution lightness ``(N, 1, H, W)`` float32 in [0, 100] to ab
    ``(N, 2, H, W)`` (``engines.pipeline.Colorizer.predict_ab``); it is called from a worker thread,
    one batch at a time. ``progress(done, total)`` is called from the calling thread after each frame
    is encoded; ``total`` is the container's frame count, an estimate from its duration, or None.

    ``dst`` appears atomically: the film is written to a hidden temporary file beside it and renamed
    at the end; on any failure (or KeyboardInterrupt) the temporary file is removed and an existing
    ``dst`` is untouched. Raises VideoError (one line, no path) for unreadable or unsupported input
    and output; exceptions from ``predict_ab`` or ``progress`` propagate unchanged.
    """
    started = time.perf_counter()
    runtime.retain_freed_memory()  # frame-sized temporaries: reuse freed memory, no fresh page faults
    src, dst = Path(src), Path(dst)
    fmt = OUTPUT_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise VideoError(f"unsupported output format: {dst.suffix or '(no suffix)'} (use .mp4, .mkv or .mov)")
    try:
        encoder = av.Codec(options.codec, "w")
    except (av.FFmpegError, ValueError) as exc:
        raise VideoError(f"no video encoder {options.codec!r} in this FFmpeg build") from exc
    if encoder.type != "video":
        raise VideoError(f"{options.codec!r} is not a video encoder")
    with contextlib.suppress(OSError):
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            raise VideoError("the output would overwrite the input")
    if not dst.parent.is_dir():
        raise VideoError("cannot write: the directory does not exist")

    probe = _probe(src)
    report = VideoReport()
    tmp = _temporary_name(dst)
    created = False
    try:
        with _open_input(src) as inp:
            try:
                out = av.open(str(tmp), "w", format=fmt, options=_MUXER_OPTIONS.get(fmt, {}))
            except (av.FFmpegError, OSError) as exc:
                raise VideoError(f"cannot write: {_reason(exc)}") from exc
            created = True
            ok = False
            try:
                with _opencv_threads_like_torch():
                    _run(inp, out, fmt, probe, predict_ab, options, progress, report)
                ok = True
            finally:
                try:
                    out.close()
                except (av.FFmpegError, OSError) as exc:
                    if ok:
                        raise VideoError(f"cannot write: {_reason(exc)}") from exc
        os.replace(tmp, dst)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    report.seconds = time.perf_counter() - started
    return report


@contextlib.contextmanager
def _opencv_threads_like_torch() -> Iterator[None]:
    """Hold OpenCV's thread pool (smoothing, resizes) to torch's thread count for the film, restored
    after: the stages already run in parallel, and an unbounded pool would oversubscribe the cores
    the caller gave torch (one thread per stage on a small machine)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(torch.get_num_threads())
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _run(inp, out, fmt: str, probe: _Probe, predict_ab, options: VideoOptions, progress, report: VideoReport) -> None:
    vin = inp.streams[probe.index]
    rate = vin.average_rate or vin.guessed_rate
    added = []

    def add_video():
        try:
            added.append(
                add_video_encoder(
                    out,
                    options.codec,
                    options.crf,
                    probe.width,
                    probe.height,
                    vin.time_base,
                    rate,
                    vin.sample_aspect_ratio,
                )
            )
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(f"cannot encode with {options.codec}: {_reason(exc)}") from exc
        return added[0]

    routes = _plan_streams(inp, out, fmt, probe.index, add_video, report)
    vout = added[0]
    if probe.display_matrix is not None:
        vout.set_display_matrix(list(probe.display_matrix))
    _copy_metadata(vin, vout)
    for key, value in inp.metadata.items():
        if key.lower() not in ("encoder", "major_brand", "minor_version", "compatible_brands", "duration"):
            out.metadata[key] = value
    with contextlib.suppress(Exception):  # chapters are a nicety
        if inp.chapters():
            out.set_chapters(inp.chapters())
    pix_fmt = vout.pix_fmt
    if pix_fmt == "yuv444p" and (probe.width % 2 or probe.height % 2):
        report.notes.append(
            f"odd frame size {probe.width}x{probe.height}: encoded as yuv444p at its exact size (some hardware players cannot decode 4:4:4)"
        )
    total = vin.frames or None
    if total is None and inp.duration and rate:
        total = max(1, round(inp.duration / 1_000_000 * float(rate)))

    smoother = ChromaSmoother(options.strength, options.scene_cut_threshold) if options.smoothing == "flow" else None
    w = _Workers()
    batch = max(1, min(options.batch_size, _BATCH_PIXELS // (probe.width * probe.height)))
    depth = batch + _QUEUE_SLACK
    q1, q2, q3 = queue.Queue(depth), queue.Queue(depth), queue.Queue(_QUEUE_SLACK)
    stats = _ReadStats()
    w.spawn("read", _read_stage, w, inp, probe.index, routes, probe, q1, stats)
    w.spawn("analyse", _analyse_stage, w, predict_ab, batch, smoother, q1, q2)
    w.spawn("compose", _compose_stage, w, pix_fmt, q2, q3)
    try:
        video_end = _mux_loop(w, q3, out, vout, vin, routes, pix_fmt, progress, total, report)
    except BaseException as exc:
        w.fail(exc)
        w.shutdown()
        if isinstance(exc, _Stopped) and w.error is not None:
            raise w.error from None
        raise
    if not w.shutdown():
        raise VideoError("internal error: a worker thread did not stop")
    if w.error is not None:
        raise w.error

    report.corrupt_frames_bridged = report.frames - stats.decoded
    report.scene_cuts = smoother.cuts if smoother is not None else 0
    if stats.failed_packets and stats.unbridgeable:
        report.notes.append(f"{stats.unbridgeable} undecodable video packets without timestamps were skipped")
    if stats.out_of_order:
        report.notes.append(f"{stats.out_of_order} frames with repeated or decreasing timestamps were dropped")
    if stats.resized:
        report.notes.append(f"{stats.resized} frames of another size were scaled to {probe.width}x{probe.height}")
    if stats.stopped_early:
        report.notes.append(f"input ends early ({stats.stopped_early}): stopped after {report.frames} frames")
    elif vin.frames and report.frames < vin.frames:
        report.notes.append(f"the container declares {vin.frames} frames but only {report.frames} could be read")
    elif inp.duration and video_end is not None and rate:
        # Matroska and MPEG-TS cut short just end: compare with the duration the header declares.
        declared = Fraction(inp.duration, 1_000_000) + Fraction(inp.start_time or 0, 1_000_000)
        if declared - video_end > max(3 / rate, declared / 50):
            report.notes.append(
                f"the video ends at {float(video_end):.2f} s but the container declares {float(declared):.2f} s: "
                "the file may be truncated"
            )
    if stats.decoded == 0:
        raise VideoError("no decodable video frames")
    tb_out = vout.time_base
    if tb_out != vin.time_base and (vin.time_base / tb_out).denominator != 1:
        report.notes.append(f"the {fmt} muxer stores time in units of {tb_out}: timestamps were rounded to it")


def _mux_loop(
    w: _Workers,
    q: queue.Queue,
    out,
    vout,
    vin,
    routes: dict[int, _Route],
    pix_fmt: str,
    progress,
    total,
    report: VideoReport,
) -> Fraction | None:
    """Encode and mux until the pipeline ends; returns the end time (s) of the last video frame."""
    tb = vin.time_base
    end: Fraction | None = None
    last_rgb: np.ndarray | None = None
    waiting: list[_Bridge] = []  # bridges before the first good frame
    earliest = Fraction(0)  # earliest timestamp of a copied packet, in seconds
    # Frame durations by pts until the encoder hands out the frame's packet: libx264 leaves packet
    # durations at 0, and the muxer would then guess the last frame's (and so the film's) duration.
    durations: dict[int, int] = {}

    def mux_video(packets: list[av.Packet]) -> None:
        for packet in packets:
            duration = durations.pop(packet.pts, 0) if packet.pts is not None else 0
            if duration and not packet.duration:
                packet.duration = duration
            out.mux(packet)

    def encode(frame: av.VideoFrame, pts: int, duration: int) -> None:
        nonlocal end
        frame.pts, frame.time_base, frame.duration = pts, tb, duration
        durations[pts] = duration
        end = (pts + duration) * tb
        try:
            mux_video(vout.encode(frame))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot encode: {_reason(exc)}") from exc
        except OSError as exc:
            raise VideoError(f"cannot write: {_os_reason(exc)}") from exc
        report.frames += 1
        if progress is not None:
            progress(report.frames, total)

    while True:
        item = w.get(q)
        if item is _END:
            break
        if isinstance(item, _Frame):
            for bridge in waiting:
                encode(rgb_to_encoder_frame(item.rgb_out, pix_fmt), bridge.pts, bridge.duration)
            waiting.clear()
            encode(item.out, item.pts, item.duration)
            last_rgb = item.rgb_out
        elif isinstance(item, _Bridge):
            if last_rgb is None:
                waiting.append(item)
            else:
                encode(rgb_to_encoder_frame(last_rgb, pix_fmt), item.pts, item.duration)
        else:
            packet = item.packet
            if packet.pts is not None and packet.time_base is not None:
                earliest = min(earliest, packet.pts * packet.time_base)
            _mux_other(out, packet, routes[packet.stream.index])
    if earliest < 0 and out.format.name == "matroska":
        report.notes.append(
            f"a copied stream starts at {float(earliest) * 1000:.0f} ms (e.g. AAC priming); Matroska cannot store "
            "negative times, so every stream was shifted later by that much (in sync)"
        )
    try:
        mux_video(vout.encode(None))
        for route in routes.values():
            if route.transcode and route.out.type == "audio":
                for packet in route.out.encode(None):
                    out.mux(packet)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot encode: {_reason(exc)}") from exc
    return end


def _mux_other(out, packet: av.Packet, route: _Route) -> None:
    try:
        if not route.transcode:
            packet.stream = route.out
            out.mux(packet)
            return
        stream = packet.stream
        if stream.type == "audio":
            for frame in packet.decode():
                for opacket in route.out.encode(frame):
                    out.mux(opacket)
            return
        if not packet.size:
            return
        subtitle = stream.codec_context.decode2(packet)
        if subtitle is None or len(subtitle) == 0:
            return
        opacket = route.out.codec_context.encode_subtitle(subtitle)
        opacket.pts, opacket.dts, opacket.duration = (
            packet.pts,
            packet.dts if packet.dts is not None else packet.pts,
            packet.duration,
        )
        opacket.time_base = stream.time_base
        opacket.stream = route.out
        out.mux(opacket)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot write {_describe(packet.stream)}: {_reason(exc)}") from exc
    except OSError as exc:
        raise VideoError(f"cannot write: {_os_reason(exc)}") from exc


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _temporary_name(dst: Path) -> Path:
    stem = dst.name
    while len(os.fsencode(stem)) > 200:
        stem = stem[:-1]
    return dst.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{dst.suffix}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, av.FFmpegError):
        return _os_reason(exc)
    return " ".join(str(exc).split()) or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__
