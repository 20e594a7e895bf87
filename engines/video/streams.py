"""Probing a film and setting up its output streams: whether a file is a video, what its first frame
says (size, display matrix), how its frames become RGB (declared or assumed matrix and range),
the encoder and colour tags the pipeline writes with, and how every other stream reaches the
output (copied, converted or dropped).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from engines.files import os_reason as _os_reason
from engines.media.formats import IMAGE_SUFFIXES, VIDEO_SUFFIXES

# Still images, and GIF, which the photo path handles (its first frame).
_PHOTO_SUFFIXES = frozenset(IMAGE_SUFFIXES) | {".gif"}


# AVColorSpace / AVColorRange / AVColorPrimaries / AVColorTransferCharacteristic values.
_AVCOL_SPC = {1: Colorspace.ITU709, 4: Colorspace.FCC, 5: Colorspace.ITU601, 6: Colorspace.ITU601,
              7: Colorspace.SMPTE240M, 9: Colorspace.BT2020, 10: Colorspace.BT2020}  # fmt: skip


_AVCOL_SPC_BT709 = 1


_AVCOL_PRI_BT709 = 1


_AVCOL_TRC_BT709 = 1


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


def frame_estimate(path: Path) -> int:
    """The film's frame count as its container states it, else from its duration and rate; 0 if unknown
    or unreadable (cheap: the header only)."""
    try:
        with av.open(str(path)) as container:
            stream = _pick_video_stream(container)
            if stream is None:
                return 0
            if stream.frames:
                return int(stream.frames)
            rate, duration = stream.average_rate, stream.duration
            if rate and duration and stream.time_base:
                return int(float(duration * stream.time_base * rate))
            if rate and container.duration:
                return int(container.duration / av.time_base * float(rate))
            return 0
    except (OSError, av.FFmpegError, ValueError):
        return 0


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
    from engines.runtime.host import cpu_flags

    if codec == "libx264" and "avx512f" in cpu_flags():
        # x264's AVX-512 code (PyAV 18.1's build, a 2-core Xeon) did not give the same stream twice from
        # the same frames (2 of 8 runs of a small clip differed in one segment), so a resumed film could
        # not match the uninterrupted one. Its AVX2 code gives the plain C code's stream exactly, at the
        # same speed (854x480, crf 18: 0.38 s against 0.37 s for 60 frames).
        options["x264-params"] = "asm=AVX2"
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


def tag_encoder_frame(frame: av.VideoFrame) -> av.VideoFrame:
    """Tag a frame made sample by sample as ``rgb_to_encoder_frame``'s are: BT.709, limited range."""
    frame.colorspace, frame.color_range = _AVCOL_SPC_BT709, ColorRange.MPEG
    frame.color_trc, frame.color_primaries = _AVCOL_TRC_BT709, _AVCOL_PRI_BT709
    return frame


def encoder_frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """An output frame (BT.709 limited range) back to RGB ``(H, W, 3)`` uint8: a bridge's picture."""
    return frame.to_ndarray(format="rgb24", src_colorspace=Colorspace.ITU709, src_color_range=ColorRange.MPEG)


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


def _plan_streams(inp, out, fmt: str, video_index: int, add_video: Callable[[], object], report) -> dict[int, _Route]:
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, av.FFmpegError):
        return _os_reason(exc)
    return " ".join(str(exc).split()) or type(exc).__name__
