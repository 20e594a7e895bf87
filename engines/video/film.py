"""Colourise a film: a streaming PyAV pipeline with motion-guided temporal smoothing of the chroma.

``colorize_video(src, dst, predict_ab)`` reads anything FFmpeg demuxes and writes MP4, Matroska or
QuickTime (by ``dst``'s suffix). The first video stream is colourised; every other stream is copied.

Data flow (four threads, bounded queues, so memory does not grow with the film's length)::

    read:    demux -> decode -> RGB (explicit matrix and range) -> CIELAB L ---------------> q1
    analyse: batches of ``batch_size`` frames -> predict_ab -> temporal smoothing of ab ---> q2
    compose: L + ab -> RGB (L kept) -> the encoder's YUV ---------------------------------> q3
    main:    encode into segment files (video packets only)
    then:    mux the segments' packets with the input's other streams (copied, in time order)

An exception in any thread sets a stop flag that every blocking queue operation checks, and the main
thread re-raises it.

Interruption
------------
Work in progress lives beside the output in ``.<name>.colorize-partial/``; nothing appears under the
output's name until the film is complete (then the folder is removed). The video is encoded in
segments of about ``segment_seconds``, each by a fresh encoder set up exactly like the final stream's,
so each starts with a keyframe and stands alone. A finished segment is fsynced and renamed into the
folder, then ``manifest.json`` (atomically replaced) records it together with a file holding the
temporal smoother's state after its last frame and that frame's RGB. A run killed in any way (Ctrl-C,
SIGTERM, SIGKILL, power cut) loses at most the segment in hand, and the one before it for the few
seconds its encoder drains in the background (see ``_SegmentWriter``); a Ctrl-C or an error lets that
drain finish. A run with ``resume`` decodes past the finished frames without colourising them,
restores the smoother's state and goes on, so its film is the uninterrupted run's: the same frames, timestamps and packets, no join. A resume is refused (one
line) when the input's size or modification time, the options or the engine differ from the manifest's.
Batches never straddle a segment boundary, so a resumed run feeds the engine the same batches.
Finally the segments' packets are muxed, unchanged, with the input's other streams, interleaved by
time. Failures that would repeat (VideoError: unreadable input, unwritable output) remove the folder;
anything else (an interruption, a crash) keeps it for ``resume``.

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
  the engine, and smoothing touches only ab (see ``engines.video.temporal``).
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
import io
import json
import os
import queue
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from av.video.reformatter import ColorRange, Colorspace

from engines import color
from engines.files import os_reason as _os_reason
from engines.media.formats import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from engines.media.formats import VIDEO_OUTPUT_FORMATS as OUTPUT_FORMATS
from engines.runtime import backends as runtime
from engines.video.temporal import DEFAULT_SCENE_CUT_THRESHOLD, ChromaSmoother

# Still images, and GIF, which the photo path handles (its first frame).
_PHOTO_SUFFIXES = frozenset(IMAGE_SUFFIXES) | {".gif"}

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
        ``engines.video.temporal``; 0.18, calibrated on the dev clips).
    segment_seconds: length of the independently encoded segments (see "Interruption" in the module
        docstring): at most this much work is lost when a run is killed.
    """

    codec: str = "libx264"
    crf: int = 18
    smoothing: str = "flow"
    strength: float = 0.6
    batch_size: int = 8
    scene_cut_threshold: float = DEFAULT_SCENE_CUT_THRESHOLD
    segment_seconds: float = 10.0

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
        if not 0 < self.segment_seconds < float("inf"):
            raise ValueError(f"segment_seconds must be positive, got {self.segment_seconds}")


@dataclass
class VideoReport:
    """What ``colorize_video`` did. Stream descriptions are human text, e.g. ``'audio 1 (aac)'``."""

    frames: int = 0  # video frames written (decoded + bridged), including those of an earlier run
    resumed_frames: int = 0  # frames an interrupted earlier run had done
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
    index: int = 0  # position in the output film (frames and bridges alike)
    l: torch.Tensor | None = None  # (1, H, W) float32 CIELAB L of the decoded frame
    ab: torch.Tensor | None = None  # (2, H, W) float32 chroma, predicted (and smoothed); any strides
    out: av.VideoFrame | None = None  # in the encoder's pixel format
    rgb_out: np.ndarray | None = None  # (H, W, 3) uint8, kept for bridging
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
    w: _Workers, inp, video_index: int, probe: _Probe, skip: int, q_out: queue.Queue, stats: _ReadStats
) -> None:
    """Demux and decode the video stream to RGB; emit frames and bridges, numbered, except the first
    ``skip`` (done by an earlier run: decoded, to keep the numbering, but not converted)."""
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

    lightness = _FrameLightness(probe.width, probe.height)

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
            put(_Frame(pts, duration, l=lightness(frame)))
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
    predict_ab: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    segment_frames: int,
    smoother: ChromaSmoother | None,
    q_in: queue.Queue,
    q_out: queue.Queue,
) -> None:
    """Batches of frames -> the engine's ab, smoothed over time frame by frame; bridges pass through
    in order. A batch never spans two segments, and the last item of each segment carries the
    smoother's state after it, so a resumed run continues exactly where this one was."""
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
        if len(frames) >= batch_size or item.index % segment_frames == segment_frames - 1:
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
    resume: bool = False,
    engine_key: dict | None = None,
) -> VideoReport:
    """Colourise the film ``src`` into ``dst`` (.mp4, .mkv or .mov); see the module docstring.

    ``predict_ab`` maps full-resolution lightness ``(N, 1, H, W)`` float32 in [0, 100] to ab
    ``(N, 2, H, W)`` (``engines.pipeline.Colorizer.predict_ab``); it is called from a worker thread,
    one batch at a time. ``progress(done, total)`` is called from the calling thread after each frame
    is encoded (first with the frames an earlier run did, when resuming); ``total`` is the container's
    frame count, an estimate from its duration, or None.

    Work in progress lives in ``.<dst name>.colorize-partial/`` beside ``dst`` (see "Interruption" in the
    module docstring); ``dst`` appears, by rename, only when the film is complete, and the folder is then
    removed. ``resume``: continue the work an interrupted run left there; without it such a folder is
    refused. ``engine_key`` (JSON-able) describes ``predict_ab``: a resume is refused unless it, the
    options and the input's size and modification time are the same. Raises VideoError (one line, no
    path) for unreadable or unsupported input and output and for a refused resume; exceptions from
    ``predict_ab`` or ``progress`` propagate unchanged.
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
    st = src.stat()
    key = {
        "input": {"name": src.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns},
        "format": fmt,
        "options": asdict(options),
        "engine": engine_key,
    }
    work = _Partial(dst, key)
    work.start(resume)  # may refuse: then the folder is left as it is
    report = VideoReport(resumed_frames=work.frames)
    try:
        if not work.manifest["complete"]:
            with _open_input(src) as inp, _opencv_threads_like_torch():
                _encode_segments(inp, fmt, probe, predict_ab, options, progress, report, work)
        report.frames = work.frames
        report.corrupt_frames_bridged = sum(seg["bridged"] for seg in work.manifest["segments"])
        report.scene_cuts = work.manifest["scene_cuts"]
        tmp = work.dir / f"film{dst.suffix}"
        _assemble(src, tmp, fmt, probe, options, work, report)
        os.replace(tmp, dst)
    except VideoError:
        work.remove()  # the same input and settings would fail the same way: nothing worth resuming
        raise
    except BaseException:
        if not work.manifest["segments"]:
            work.remove()  # nothing finished: nothing to resume
        raise
    work.remove()
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


def _segment_frames(options: VideoOptions, rate: Fraction | None, batch: int) -> int:
    """Frames per segment: about ``options.segment_seconds``, a whole number of batches."""
    return batch * max(1, round(float(rate or 25) * options.segment_seconds / batch))


def _encode_segments(
    inp, fmt: str, probe: _Probe, predict_ab, options: VideoOptions, progress, report: VideoReport, work: _Partial
) -> None:
    """Colourise the frames the partial work lacks, segment by segment, into ``work``."""
    vin = inp.streams[probe.index]
    rate = vin.average_rate or vin.guessed_rate
    pix_fmt = encoder_pixel_format(options.codec, probe.width, probe.height)
    if pix_fmt == "yuv444p" and (probe.width % 2 or probe.height % 2):
        report.notes.append(
            f"odd frame size {probe.width}x{probe.height}: encoded as yuv444p at its exact size (some hardware players cannot decode 4:4:4)"
        )
    total = vin.frames or None
    if total is None and inp.duration and rate:
        total = max(1, round(inp.duration / 1_000_000 * float(rate)))

    smoother = ChromaSmoother(options.strength, options.scene_cut_threshold) if options.smoothing == "flow" else None
    batch = max(1, min(options.batch_size, _BATCH_PIXELS // (probe.width * probe.height)))
    segment = work.segment_frames(_segment_frames(options, rate, batch))
    state = work.load_state()
    if smoother is not None and "cuts" in state:
        smoother.set_state(state)
    writer = _SegmentWriter(work, fmt, options, probe, vin, rate, pix_fmt, segment, state.get("last_rgb"))
    if progress is not None and work.frames:
        progress(work.frames, total)
    w = _Workers()
    depth = batch + _QUEUE_SLACK
    q1, q2, q3 = queue.Queue(depth), queue.Queue(depth), queue.Queue(_QUEUE_SLACK)
    stats = _ReadStats()
    w.spawn("read", _read_stage, w, inp, probe.index, probe, work.frames, q1, stats)
    w.spawn("analyse", _analyse_stage, w, predict_ab, batch, segment, smoother, q1, q2)
    w.spawn("compose", _compose_stage, w, pix_fmt, q2, q3)
    try:
        while (item := w.get(q3)) is not _END:
            writer.write(item)
            if progress is not None:
                progress(writer.index, total)
        writer.finish(smoother.cuts if smoother is not None else 0)
    except BaseException as exc:
        w.fail(exc)
        w.shutdown()
        writer.abandon()
        if isinstance(exc, _Stopped) and w.error is not None:
            raise w.error from None
        raise
    if not w.shutdown():
        raise VideoError("internal error: a worker thread did not stop")
    if w.error is not None:
        raise w.error

    if stats.failed_packets and stats.unbridgeable:
        report.notes.append(f"{stats.unbridgeable} undecodable video packets without timestamps were skipped")
    if stats.out_of_order:
        report.notes.append(f"{stats.out_of_order} frames with repeated or decreasing timestamps were dropped")
    if stats.resized:
        report.notes.append(f"{stats.resized} frames of another size were scaled to {probe.width}x{probe.height}")
    video_end = work.manifest["end"]
    if stats.stopped_early:
        report.notes.append(f"input ends early ({stats.stopped_early}): stopped after {work.frames} frames")
    elif vin.frames and work.frames < vin.frames:
        report.notes.append(f"the container declares {vin.frames} frames but only {work.frames} could be read")
    elif inp.duration and video_end is not None and rate:
        # Matroska and MPEG-TS cut short just end: compare with the duration the header declares.
        end = Fraction(*video_end)
        declared = Fraction(inp.duration, 1_000_000) + Fraction(inp.start_time or 0, 1_000_000)
        if declared - end > max(3 / rate, declared / 50):
            report.notes.append(
                f"the video ends at {float(end):.2f} s but the container declares {float(declared):.2f} s: "
                "the file may be truncated"
            )
    if work.frames == 0 or (stats.decoded == 0 and not report.resumed_frames):
        raise VideoError("no decodable video frames")


class _Segment:
    """One segment in the making: its encoder (on a throwaway container of the output format), its
    file and what the manifest will record of it."""

    def __init__(self, writer: _SegmentWriter, number: int):
        self.box = av.open(io.BytesIO(), "w", format=writer.fmt)
        o, probe, vin = writer.options, writer.probe, writer.vin
        try:
            self.stream = add_video_encoder(
                self.box, o.codec, o.crf, probe.width, probe.height, vin.time_base, writer.rate, vin.sample_aspect_ratio
            )
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(f"cannot encode with {o.codec}: {_reason(exc)}") from exc
        self.durations: dict[int, int] = {}  # by pts: libx264 leaves packet durations at 0
        self.frames = self.bridged = 0
        self.end: Fraction | None = None
        self.tmp = writer.work.dir / f"segment-{number:06d}.tmp"
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _SegmentWriter._finish_segment or abandon

    def put(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            duration = self.durations.pop(packet.pts, 0) if packet.pts is not None else 0
            _write_packet(self.file, packet, packet.duration or duration)


class _SegmentWriter:
    """Encodes the pipeline's frames into segment files of ``segment`` frames, each from a fresh
    encoder (so each starts with a keyframe and depends on no other), and commits each one to ``work``.

    The encoder is set up exactly as the final stream will be (``add_video_encoder`` on a throwaway
    container of the output format), so its packets can be muxed into the film unchanged.

    A finished segment's encoder is drained and the segment committed in a thread of its own: x264
    holds tens of frames (lookahead, frame threads) and takes seconds to drain, during which the
    pipeline would otherwise stand still (measured: 3 s per 10-s segment of 854x480 on 2 cores). The
    next segment's encoder starts meanwhile; commits stay in order, and at most one segment drains at
    a time (two encoders alive at a boundary)."""

    def __init__(self, work, fmt, options, probe, vin, rate, pix_fmt, segment, last_rgb):
        self.work, self.fmt, self.options, self.probe = work, fmt, options, probe
        self.vin, self.rate, self.pix_fmt, self.segment = vin, rate, pix_fmt, segment
        self.last_rgb = last_rgb  # the previous output frame, for bridging
        self.index = work.frames  # the next output frame's number
        self.waiting: list[_Bridge] = []  # bridges before the first good frame
        self.current: _Segment | None = None
        self.number = len(work.manifest["segments"])  # the next segment's number
        self.draining: threading.Thread | None = None
        self.drain_error: BaseException | None = None

    def _encode(self, frame: av.VideoFrame, pts: int, duration: int, bridged: bool, state: dict | None) -> None:
        if self.current is None:
            self.current = _Segment(self, self.number)
            self.number += 1
        seg = self.current
        tb = self.vin.time_base
        frame.pts, frame.time_base, frame.duration = pts, tb, duration
        seg.durations[pts] = duration
        seg.end = (pts + duration) * tb
        try:
            seg.put(seg.stream.encode(frame))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot encode: {_reason(exc)}") from exc
        seg.frames += 1
        seg.bridged += bridged
        self.index += 1
        if self.index % self.segment == 0:
            self._commit(state, wait=False)

    def write(self, item: _Frame | _Bridge) -> None:
        if isinstance(item, _Frame):
            for bridge in self.waiting:
                frame = rgb_to_encoder_frame(item.rgb_out, self.pix_fmt)
                self._encode(frame, bridge.pts, bridge.duration, True, bridge.state)
            self.waiting.clear()
            self.last_rgb = item.rgb_out
            self._encode(item.out, item.pts, item.duration, False, item.state)
        elif self.last_rgb is None:
            self.waiting.append(item)
        else:
            self._encode(rgb_to_encoder_frame(self.last_rgb, self.pix_fmt), item.pts, item.duration, True, item.state)

    def _commit(self, state: dict | None, wait: bool) -> None:
        """Drain the current segment's encoder and commit it: in a thread (``wait`` False), or here."""
        self._wait_for_drain()  # commits in order
        seg, self.current = self.current, None
        if state is not None and self.last_rgb is not None:
            state = {**state, "last_rgb": self.last_rgb}
        if wait:
            self._finish_segment(seg, state)
            return
        self.draining = threading.Thread(
            target=self._drain, args=(seg, state), name="colorize-video-segment", daemon=True
        )
        self.draining.start()

    def _drain(self, seg: _Segment, state: dict | None) -> None:
        try:
            self._finish_segment(seg, state)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _wait_for_drain in the writer's thread
            self.drain_error = exc

    def _finish_segment(self, seg: _Segment, state: dict | None) -> None:
        try:
            seg.put(seg.stream.encode(None))
        except av.FFmpegError as exc:
            raise VideoError(f"cannot encode: {_reason(exc)}") from exc
        extradata = bytes(seg.stream.codec_context.extradata or b"")
        _close_durably(seg.file)
        seg.file = None
        self.work.commit(seg.tmp, seg.frames, seg.bridged, seg.end, extradata, state)

    def _wait_for_drain(self) -> None:
        if self.draining is not None:
            self.draining.join()
            self.draining = None
        if self.drain_error is not None:
            exc, self.drain_error = self.drain_error, None
            raise exc

    def finish(self, scene_cuts: int) -> None:
        if self.waiting:  # a film of lost frames only: nothing to repeat
            raise VideoError("no decodable video frames")
        if self.current is not None:
            self._commit(None, wait=True)
        self._wait_for_drain()
        self.work.complete(scene_cuts)

    def abandon(self) -> None:
        """After a failure or an interruption: a segment already finished still drains and is committed
        (it is whole; a resume keeps it), the one in hand is discarded."""
        with contextlib.suppress(Exception):  # the failure being handled is what the caller sees
            self._wait_for_drain()
        seg, self.current = self.current, None
        if seg is not None and seg.file is not None:
            with contextlib.suppress(OSError):
                seg.file.close()
                os.unlink(seg.tmp)


# A segment file: the encoder's packets in decode order, each a header and its bytes.
_PACKET_HEADER = struct.Struct("<qqqBI")  # pts, dts, duration, keyframe, size
_NO_TIME = -(2**63)


def _write_packet(file, packet: av.Packet, duration: int) -> None:
    def t(v: int | None) -> int:
        return _NO_TIME if v is None else v

    file.write(_PACKET_HEADER.pack(t(packet.pts), t(packet.dts), duration, packet.is_keyframe, packet.size))
    file.write(bytes(packet))


def _read_packets(path: Path, stream, time_base: Fraction) -> Iterator[av.Packet]:
    with open(path, "rb") as file:
        while head := file.read(_PACKET_HEADER.size):
            pts, dts, duration, key, size = _PACKET_HEADER.unpack(head)
            packet = av.Packet(file.read(size))
            packet.pts = None if pts == _NO_TIME else pts
            packet.dts = None if dts == _NO_TIME else dts
            packet.duration, packet.time_base, packet.is_keyframe = duration, time_base, bool(key)
            packet.stream = stream
            yield packet


def _close_durably(file) -> None:
    """Flush, fsync (a power cut must not leave a committed file empty) and close."""
    file.flush()
    with contextlib.suppress(OSError):  # some filesystems cannot fsync
        os.fsync(file.fileno())
    file.close()


class _Partial:
    """A film's work in progress: ``.<dst name>.colorize-partial/`` beside ``dst``, holding finished
    segment files, the smoother's state after the last of them, and ``manifest.json``, which names
    them and is replaced atomically after each segment. Only what the manifest names counts: a
    segment being written when the run was killed is discarded on resume."""

    def __init__(self, dst: Path, key: dict):
        self.dir = dst.with_name(f".{dst.name}.colorize-partial")
        self.key = json.loads(json.dumps(key))  # as it reads back from the manifest
        self.manifest: dict = {}

    @property
    def frames(self) -> int:
        return sum(seg["frames"] for seg in self.manifest["segments"])

    def start(self, resume: bool) -> None:
        manifest = None
        if self.dir.exists():
            try:
                manifest = json.loads((self.dir / "manifest.json").read_text())
            except FileNotFoundError:
                pass  # killed before the first segment was done: nothing to keep
            except (OSError, ValueError) as exc:
                raise VideoError(f"unreadable work of an interrupted run in {self.dir.name}: delete it") from exc
        if manifest is not None and manifest.get("segments"):
            if not resume:
                raise VideoError(
                    f"an interrupted run's work is in {self.dir.name}: add --resume to continue it, "
                    "or delete that folder to start over"
                )
            if manifest.get("key") != self.key:
                raise VideoError(
                    f"the interrupted run's work in {self.dir.name} was made with other settings or another "
                    "version of the input: use the same settings, or delete that folder to start over"
                )
            self.manifest = manifest
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.manifest = {"version": 1, "key": self.key, "segment_frames": None, "segments": [],
                             "state": None, "extradata": None, "end": None, "complete": False, "scene_cuts": 0}  # fmt: skip
        try:
            self.dir.mkdir(exist_ok=True)
            for p in self.dir.iterdir():  # leftovers of a killed run that the manifest does not name
                if p.name not in self._named():
                    p.unlink()
        except OSError as exc:
            raise VideoError(f"cannot write: {_os_reason(exc)}") from exc

    def _named(self) -> set[str]:
        m = self.manifest
        return {"manifest.json", *(seg["file"] for seg in m["segments"]), *([m["state"]] if m["state"] else [])}

    def segment_frames(self, wanted: int) -> int:
        if self.manifest["segment_frames"] is None:
            self.manifest["segment_frames"] = wanted
        return self.manifest["segment_frames"]

    def load_state(self) -> dict:
        if not self.manifest["state"]:
            return {}
        with np.load(self.dir / self.manifest["state"]) as z:
            return {k: z[k] for k in z.files}

    def commit(self, tmp: Path, frames: int, bridged: int, end, extradata: bytes, state: dict | None) -> None:
        """Make the segment just written part of the work: rename it, save the state, then the manifest."""
        m = self.manifest
        if m["extradata"] is None:
            m["extradata"] = extradata.hex()
        elif m["extradata"] != extradata.hex():
            raise VideoError("internal error: the encoder's stream headers changed between segments")
        k = len(m["segments"])
        name = f"segment-{k:06d}.bin"
        os.replace(tmp, self.dir / name)
        old_state = m["state"]
        m["state"] = None
        if state is not None:
            m["state"] = f"state-{k:06d}.npz"
            with open(self.dir / f"{m['state']}.tmp", "wb") as file:
                np.savez(file, **state)
                _close_durably(file)
            os.replace(self.dir / f"{m['state']}.tmp", self.dir / m["state"])
        m["segments"].append({"file": name, "frames": frames, "bridged": bridged})
        m["end"] = [end.numerator, end.denominator] if end is not None else m["end"]
        self._save()
        if old_state:
            with contextlib.suppress(OSError):
                os.unlink(self.dir / old_state)

    def complete(self, scene_cuts: int) -> None:
        self.manifest["complete"] = True
        self.manifest["scene_cuts"] = scene_cuts
        self._save()

    def _save(self) -> None:
        tmp = self.dir / "manifest.json.tmp"
        with open(tmp, "w") as file:
            json.dump(self.manifest, file)
            _close_durably(file)
        os.replace(tmp, self.dir / "manifest.json")
        with contextlib.suppress(OSError):  # the renames themselves must survive a power cut
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def packets(self, stream, time_base: Fraction) -> Iterator[av.Packet]:
        for seg in self.manifest["segments"]:
            yield from _read_packets(self.dir / seg["file"], stream, time_base)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _assemble(src: Path, tmp: Path, fmt: str, probe: _Probe, options: VideoOptions, work: _Partial, report) -> None:
    """Mux the segments' video packets, unchanged and with their timestamps, with the input's other
    streams (copied or converted as ``_plan_streams`` decides) into ``tmp``."""
    with _open_input(src) as inp:
        try:
            out = av.open(str(tmp), "w", format=fmt, options=_MUXER_OPTIONS.get(fmt, {}))
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"cannot write: {_reason(exc)}") from exc
        ok = False
        try:
            _mux_film(inp, out, fmt, probe, options, work, report)
            ok = True
        finally:
            try:
                out.close()
            except (av.FFmpegError, OSError) as exc:
                if ok:
                    raise VideoError(f"cannot write: {_reason(exc)}") from exc


def _mux_film(inp, out, fmt: str, probe: _Probe, options: VideoOptions, work: _Partial, report) -> None:
    vin = inp.streams[probe.index]
    rate = vin.average_rate or vin.guessed_rate
    added = []

    def add_video():
        try:
            added.append(
                add_video_encoder(
                    out, options.codec, options.crf, probe.width, probe.height, vin.time_base, rate,
                    vin.sample_aspect_ratio,
                )
            )  # fmt: skip
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
    try:
        out.start_encoding()  # opens the (unused) encoder: its stream headers must be the segments'
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot write: {_reason(exc)}") from exc
    if bytes(vout.codec_context.extradata or b"").hex() != work.manifest["extradata"]:
        raise VideoError("internal error: the encoder's stream headers differ from the segments'")

    tb = vin.time_base
    video = work.packets(vout, tb)
    pending = next(video, None)

    def video_until(t: Fraction | None) -> None:
        """Mux video packets that start (in decode order) before ``t`` (None: all)."""
        nonlocal pending
        while pending is not None:
            when = pending.dts if pending.dts is not None else pending.pts
            if t is not None and when is not None and when * tb > t:
                return
            _mux_packet(out, pending)
            pending = next(video, None)

    earliest = Fraction(0)  # earliest timestamp of a copied packet, in seconds
    others = [inp.streams[i] for i in routes]
    if others:
        demuxer = inp.demux(others)
        while True:
            try:
                packet = next(demuxer)
            except StopIteration:
                break
            except av.FFmpegError:
                break  # a truncated input: its end was noted when the video was read
            if not (packet.size or routes[packet.stream.index].transcode):
                continue
            when = packet.dts if packet.dts is not None else packet.pts
            if when is not None and packet.time_base is not None:
                video_until(when * packet.time_base)
            if packet.pts is not None and packet.time_base is not None:
                earliest = min(earliest, packet.pts * packet.time_base)
            _mux_other(out, packet, routes[packet.stream.index])
    video_until(None)
    if earliest < 0 and out.format.name == "matroska":
        report.notes.append(
            f"a copied stream starts at {float(earliest) * 1000:.0f} ms (e.g. AAC priming); Matroska cannot store "
            "negative times, so every stream was shifted later by that much (in sync)"
        )
    try:
        for route in routes.values():
            if route.transcode and route.out.type == "audio":
                for packet in route.out.encode(None):
                    out.mux(packet)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot encode: {_reason(exc)}") from exc
    tb_out = vout.time_base
    if tb_out != vin.time_base and (vin.time_base / tb_out).denominator != 1:
        report.notes.append(f"the {fmt} muxer stores time in units of {tb_out}: timestamps were rounded to it")


def _mux_packet(out, packet: av.Packet) -> None:
    try:
        out.mux(packet)
    except av.FFmpegError as exc:
        raise VideoError(f"cannot write: {_reason(exc)}") from exc
    except OSError as exc:
        raise VideoError(f"cannot write: {_os_reason(exc)}") from exc


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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, av.FFmpegError):
        return _os_reason(exc)
    return " ".join(str(exc).split()) or type(exc).__name__
