"""Decode and encode single still images with PyAV (FFmpeg's codecs, no OpenCV or Pillow).

Reading
-------
``read_photo`` recognises JPEG, PNG, TIFF, WebP and BMP by their leading bytes (never by the file
name), parses the container header in Python to learn the declared size, the EXIF orientation and
whether the file is complete, and only then hands the whole file to FFmpeg's decoder as one packet.
Anything else is given to FFmpeg's demuxer probing (content based), so e.g. a GIF or the first
frame of a video also works.

- Pixels come back as float32 sRGB in [0, 1], shape ``(H, W, 3)``; alpha (if the file has one) as
  float32 ``(H, W)`` in [0, 1]. Gray inputs are replicated to three channels.
- Every decoder output goes through an explicit swscale conversion to rgb24 / rgba / rgb48 /
  rgba64 with the frame's colour range passed on, so JPEG's full-range BT.601 YCbCr is expanded
  correctly. Subsampled JPEG and WebP chroma is first upsampled here with libjpeg's / libwebp's
  triangle filter (swscale would repeat samples, several levels off on detailed photos), so the
  result matches OpenCV's and Pillow's decodes to a fraction of a level. CMYK and YCCK (Adobe)
  JPEGs are converted to RGB by FFmpeg's mjpeg decoder itself.
- EXIF orientation (1-8) is applied here, from the JPEG APP1 Exif segment, the TIFF IFD0
  Orientation tag, the PNG eXIf chunk or the WebP EXIF chunk. FFmpeg never rotates decoded pixels:
  it only attaches a display matrix as side data (which this module ignores), so nothing is
  applied twice.
- The declared width x height is checked against ``max_pixels`` before any pixel is decoded.
- Truncation is detected structurally: a JPEG without an EOI marker after its first scan, a PNG
  without IEND, a TIFF whose strips/tiles point past the end of the file, a WebP shorter than its
  RIFF size or a BMP shorter than its pixel array is refused with
  ``PhotoError('truncated or corrupt image data')`` (FFmpeg itself would decode a cut JPEG with a
  gray bottom part and say nothing).

Writing
-------
``write_photo`` picks the encoder from the suffix, encodes in memory, writes a hidden temporary
file next to the destination and renames it into place with ``os.replace``, so the destination is
either the complete new file or untouched.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace

from engines.files import os_reason, write_bytes

MAX_PIXELS: int = 100_000_000
# Compressed files larger than this are refused before reading (no photo needs it).
MAX_FILE_BYTES: int = 2 * 2**30

_TRUNCATED = "truncated or corrupt image data"
_NOT_AN_IMAGE = "not an image (or an unsupported format)"
# Enough leading bytes to tell every supported format apart.
_SNIFF_BYTES = 18
# WebP stores width-1 and height-1 in 14 bits (lossy/lossless bitstreams): larger cannot be encoded.
_WEBP_MAX_SIDE = 16383


class PhotoError(Exception):
    """A photo cannot be read or written. The message is one human-readable line without the path
    (the caller prefixes the file name), e.g. ``'truncated or corrupt image data'``."""


@dataclass
class Photo:
    """A decoded still image.

    rgb: float32 ``(H, W, 3)`` sRGB in [0, 1], EXIF orientation applied; gray replicated to 3 channels.
        Read with ``levels=True``, an 8-bit photo's rgb is its uint8 levels instead (no float copy).
    alpha: float32 ``(H, W)`` in [0, 1] oriented like ``rgb``; None when the input has no alpha.
    bit_depth: 8 or 16, the input's sample depth (16 for 16-bit PNG/TIFF).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int


@dataclass
class _Header:
    """What the container header says, parsed before any pixel is decoded."""

    codec: str  # FFmpeg decoder name
    width: int
    height: int
    orientation: int = 1  # EXIF orientation, 1 (as stored) to 8
    alpha: bool | None = None  # None: the decoder's pixel format decides
    drop_opaque_alpha: bool = False  # report no alpha when every pixel is opaque
    # Subsampled chroma sits between luma samples (JPEG, WebP): upsample it like libjpeg/libwebp.
    centered_chroma: bool = False


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_photo(path: Path, max_pixels: int = MAX_PIXELS, *, levels: bool = False) -> Photo:
    """Decode the still image at ``path`` (format detected from the content).

    JPEG, PNG, TIFF, WebP and BMP are parsed and decoded here; anything else FFmpeg recognises
    (GIF, a video: its first frame) is decoded too. ``Photo.bit_depth`` is 16 when the decoded
    samples are deeper than 8 bits. EXIF orientation is applied to ``rgb`` and ``alpha``.
    ``levels``: 8-bit photos keep ``rgb`` as their uint8 levels (16-bit ones are float32 either way).

    Raises PhotoError (one line, no path in it) for anything that is not a readable image: missing
    or unreadable file, empty file, unknown format, truncated or corrupt data, declared size above
    ``max_pixels`` (checked before any pixel is decoded).
    """
    try:
        # Refuse FIFOs and devices before opening: reading one would block or never end.
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise PhotoError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise PhotoError("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise PhotoError(f"file too large: {st.st_size / 2**30:.1f} GiB (limit {MAX_FILE_BYTES // 2**30} GiB)")
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
            if not head:
                raise PhotoError("empty file")
            parse = _sniff(head)
            if parse is None:
                # Not one of the formats parsed here: let FFmpeg probe the content (GIF, video, ...).
                fh.seek(0)
                frame = _decode_container(fh, max_pixels)
                # GIF and friends decode to bgra even without transparency.
                header = _Header("", frame.width, frame.height, drop_opaque_alpha=True)
            else:
                data = head + fh.read()
                header = parse(data)
                _check_size(header.width, header.height, max_pixels)
                frame = _decode_packet(data, header.codec)
    except PhotoError:
        raise
    except FileNotFoundError as exc:
        raise PhotoError("file not found") from exc
    except IsADirectoryError as exc:
        raise PhotoError("is a directory") from exc
    except PermissionError as exc:
        raise PhotoError("permission denied") from exc
    except MemoryError as exc:
        raise PhotoError("not enough memory to decode the image") from exc
    except av.FFmpegError as exc:  # before OSError/ValueError: FFmpeg errors subclass both
        raise PhotoError(_TRUNCATED) from exc
    except OSError as exc:
        raise PhotoError(f"cannot read: {os_reason(exc)}") from exc
    except (ValueError, struct.error, IndexError) as exc:
        raise PhotoError(_TRUNCATED) from exc

    _check_size(frame.width, frame.height, max_pixels)
    try:
        rgb, alpha, bit_depth = _frame_to_arrays(frame, header, levels)
    except MemoryError as exc:
        raise PhotoError("not enough memory to decode the image") from exc
    except (av.FFmpegError, ValueError) as exc:
        raise PhotoError(f"unsupported pixel format: {frame.format.name}") from exc
    if alpha is not None and header.drop_opaque_alpha and bool((alpha == 1.0).all()):
        alpha = None
    rgb = _apply_orientation(rgb, header.orientation)
    if alpha is not None:
        alpha = _apply_orientation(alpha, header.orientation)
    return Photo(rgb=rgb, alpha=alpha, bit_depth=bit_depth)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise PhotoError(f"invalid image size: {width}x{height}")
    if width * height > max_pixels:
        raise PhotoError(f"image too large: {width}x{height} pixels (limit {max_pixels / 1e6:g} megapixels)")


def _decode_packet(data: bytes, codec: str) -> av.VideoFrame:
    """Decode a whole image file given as one packet (how FFmpeg's image demuxers feed it)."""
    ctx = av.CodecContext.create(codec, "r")
    frames = ctx.decode(av.Packet(data))
    frames += ctx.decode(None)  # flush: frame-threaded decoders hand the frame out only here
    if not frames:
        raise PhotoError(_TRUNCATED)
    return frames[0]


def _decode_container(fh, max_pixels: int) -> av.VideoFrame:
    """First video frame of whatever FFmpeg recognises in the open file ``fh`` (a file object, so
    probing looks at the content and not at the file name's extension)."""
    try:
        container = av.open(fh, "r")
    except av.FFmpegError as exc:
        raise PhotoError(_NOT_AN_IMAGE) from exc
    with container:
        if not container.streams.video:
            raise PhotoError(_NOT_AN_IMAGE)
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise PhotoError(_NOT_AN_IMAGE)
        _check_size(width, height, max_pixels)
        for frame in container.decode(stream):
            return frame
    raise PhotoError(_TRUNCATED)


def _frame_to_arrays(
    frame: av.VideoFrame, header: _Header, levels: bool = False
) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Decoded frame -> (rgb float32 (H, W, 3), alpha float32 (H, W) or None, bit depth 8/16); with
    ``levels`` an 8-bit frame's rgb is its uint8 levels."""
    fmt = frame.format
    deep = max(c.bits for c in fmt.components) > 8

    def rgb8(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values) if levels else _scale(values, 255)

    if fmt.has_palette:
        # PNG tRNS ends up in the palette's alpha: report alpha only when some pixel uses it.
        rgba = frame.to_ndarray(format="rgba")
        has_alpha = header.alpha is not False and not bool((rgba[..., 3] == 255).all())
        return rgb8(rgba[..., :3]), (_scale(rgba[..., 3], 255) if has_alpha else None), 8

    has_alpha = any(c.is_alpha for c in fmt.components) if header.alpha is None else header.alpha
    if header.centered_chroma and not deep:
        upsampled = _upsample_chroma(frame)
        if upsampled is not None:
            # JPEG (JFIF) and WebP both define their YCbCr as BT.601.
            rgb = upsampled.to_ndarray(
                format="rgb24", src_color_range=upsampled.color_range, src_colorspace=Colorspace.ITU601
            )
            alpha = None
            if has_alpha and len(frame.planes) == 4:  # yuva: alpha is the full-size 4th plane
                alpha = _scale(_plane(frame, 3), 255)
            return rgb8(rgb), alpha, 8

    if has_alpha:
        target = "rgba64le" if deep else "rgba"
    else:
        target = "rgb48le" if deep else "rgb24"
    # The frame's own range is passed on explicitly: PyAV would otherwise assume "unspecified",
    # which swscale treats as limited range for plain yuv formats.
    arr = frame.to_ndarray(format=target, src_color_range=frame.color_range)
    full = 65535 if deep else 255
    alpha = _scale(arr[..., 3], full) if has_alpha else None
    if not deep:
        return rgb8(arr[..., :3]), alpha, 8
    return _scale(arr[..., :3], full), alpha, 16


# 8-bit planar YCbCr layouts whose chroma is halved in width and/or height.
_HALF_CHROMA_FORMATS = frozenset(
    {"yuv420p", "yuvj420p", "yuva420p", "yuv422p", "yuvj422p", "yuva422p", "yuv440p", "yuvj440p"}
)


def _upsample_chroma(frame: av.VideoFrame) -> av.VideoFrame | None:
    """A yuv444p copy of an 8-bit 4:2:0 / 4:2:2 / 4:4:0 frame, chroma upsampled with the
    triangle ("fancy") filter of libjpeg and libwebp; None for other layouts.

    swscale's unscaled YUV -> RGB path repeats each chroma sample instead, which on detailed
    photos is off by several levels (mean 3/255 against libjpeg on a busy 4:2:0 JPEG).
    """
    if frame.format.name not in _HALF_CHROMA_FORMATS:
        return None
    width, height = frame.width, frame.height
    planes = [_plane(frame, 0)]
    for index in (1, 2):
        chroma = _plane(frame, index).astype(np.uint16)
        shift = 0
        if chroma.shape[0] != height:
            chroma = _triangle_double(chroma, 0)[:height]
            shift += 2
        if chroma.shape[1] != width:
            chroma = _triangle_double(chroma, 1)[:, :width]
            shift += 2
        # Each pass scaled by 4; round back to 8 bits like libjpeg.
        planes.append(((chroma + (1 << shift >> 1)) >> shift).astype(np.uint8))
    out = av.VideoFrame.from_ndarray(np.stack(planes), format="yuv444p")
    full_range = frame.format.name.startswith("yuvj") or frame.color_range == ColorRange.JPEG
    out.color_range = ColorRange.JPEG if full_range else ColorRange.MPEG
    return out


def _triangle_double(c: np.ndarray, axis: int) -> np.ndarray:
    """Double ``c`` (uint16) along ``axis``: each output sample is 3/4 of the nearer input sample
    plus 1/4 of the next nearer one (edges repeat), times 4 to keep integer precision."""
    c = np.moveaxis(c, axis, 0)
    near = c * 3
    out = np.empty((2 * c.shape[0],) + c.shape[1:], np.uint16)
    out[0::2] = near
    out[1::2] = near
    out[2::2] += c[:-1]
    out[0] += c[0]
    out[1:-1:2] += c[1:]
    out[-1] += c[-1]
    return np.moveaxis(out, 0, axis)


def _plane(frame: av.VideoFrame, index: int) -> np.ndarray:
    """One 8-bit plane of ``frame`` as a (rows, columns) view without the line padding."""
    plane = frame.planes[index]
    rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    return rows[: plane.height, : plane.width]


def _scale(values: np.ndarray, full: int) -> np.ndarray:
    """Integer samples in [0, full] -> float32 in [0, 1]."""
    out = values.astype(np.float32)
    out /= full
    return out


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored ``(H, W, ...)`` array into its display orientation (EXIF tag 274 semantics)."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:  # rotate 90 degrees clockwise
        a = a.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        a = a.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:  # rotate 90 degrees counter-clockwise
        a = a.swapaxes(0, 1)[::-1]
    else:
        return a
    return np.ascontiguousarray(a)


# --- container headers ------------------------------------------------------------------------


def _sniff(head: bytes):
    """The header parser for the format that ``head`` (the first bytes) belongs to, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return _parse_jpeg
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return _parse_png
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _parse_tiff
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _parse_webp
    # "BM" alone is too common (text starting "BM..."): also require a known DIB header size.
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in _BMP_DIB_SIZES:
        return _parse_bmp
    return None


# JPEG SOF markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _parse_jpeg(data: bytes) -> _Header:
    pos, size, orientation = 2, None, 1
    while True:
        # Like libjpeg, skip stray bytes between segments; a marker is 0xFF (repeatable as fill)
        # followed by its code.
        pos = data.find(b"\xff", pos)
        if pos < 0:
            raise PhotoError(_TRUNCATED)
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            raise PhotoError(_TRUNCATED)
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers, no length
            continue
        if marker == 0xD9:  # EOI before any scan
            raise PhotoError(_TRUNCATED)
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > len(data):
            raise PhotoError(_TRUNCATED)
        segment = data[pos + 2 : pos + length]
        if marker in _JPEG_SOF and size is None:
            height, width = struct.unpack_from(">HH", segment, 1)
            size = (width, height)
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(segment[6:])
        elif marker == 0xDA:  # start of (the first) scan: entropy-coded data follows
            if size is None:
                raise PhotoError(_TRUNCATED)
            # In entropy-coded data 0xFF is always stuffed (FF 00) or a marker, so FF D9 after the
            # first scan can only be the end-of-image marker: without it the file was cut short.
            if data.find(b"\xff\xd9", pos + length) < 0:
                raise PhotoError(_TRUNCATED)
            return _Header("mjpeg", size[0], size[1], orientation, alpha=False, centered_chroma=True)
        pos += length


def _parse_png(data: bytes) -> _Header:
    pos, width, height, orientation = 8, 0, 0, 1
    first = True
    while True:
        if pos + 8 > len(data):
            raise PhotoError(_TRUNCATED)
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length + 4  # header, data, CRC
        if end > len(data):
            raise PhotoError(_TRUNCATED)
        if first:
            if ctype != b"IHDR" or length < 13:
                raise PhotoError(_TRUNCATED)
            width, height = struct.unpack_from(">II", data, pos + 8)
            first = False
        elif ctype == b"eXIf":
            orientation = _exif_orientation(data[pos + 8 : pos + 8 + length])
        elif ctype == b"IEND":
            return _Header("png", width, height, orientation)
        pos = end


def _parse_webp(data: bytes) -> _Header:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if 8 + riff_size > len(data):
        raise PhotoError(_TRUNCATED)
    end = 8 + riff_size
    pos = 12
    width = height = 0
    alpha: bool | None = None
    orientation = 1
    while pos + 8 <= end:
        ctype, length = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise PhotoError(_TRUNCATED)
        if ctype == b"VP8X":
            flags = body[0]
            if flags & 0x02:
                raise PhotoError("animated WebP is not supported")
            width = 1 + int.from_bytes(body[4:7], "little")
            height = 1 + int.from_bytes(body[7:10], "little")
            alpha = bool(flags & 0x10)
        elif ctype == b"VP8 " and not width:
            # Frame tag (3 bytes), start code 9D 01 2A, then 14-bit width and height.
            if body[3:6] != b"\x9d\x01\x2a":
                raise PhotoError(_TRUNCATED)
            w, h = struct.unpack_from("<HH", body, 6)
            width, height, alpha = w & 0x3FFF, h & 0x3FFF, False
        elif ctype == b"VP8L" and not width:
            # Signature 0x2F, then width-1 (14 bits), height-1 (14 bits), alpha_is_used (1 bit).
            if body[:1] != b"\x2f":
                raise PhotoError(_TRUNCATED)
            (bits,) = struct.unpack_from("<I", body, 1)
            width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            alpha = bool((bits >> 28) & 1)
        elif ctype == b"EXIF":
            orientation = _exif_orientation(body[6:] if body.startswith(b"Exif\x00\x00") else body)
        pos += 8 + length + (length & 1)  # chunks are padded to even sizes
    return _Header("webp", width, height, orientation, alpha, centered_chroma=True)


# BITMAPCOREHEADER, BITMAPINFOHEADER, V2, V3, OS/2 v2, V4, V5.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def _parse_bmp(data: bytes) -> _Header:
    (offset, dib_size) = struct.unpack_from("<II", data, 10)
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _planes, bpp = struct.unpack_from("<hhHH", data, 18)
        compression = 0
    else:
        width, height, _planes, bpp, compression = struct.unpack_from("<iiHHI", data, 18)
    height = abs(height)  # negative height: rows stored top-down
    if compression in (0, 3, 6) and width > 0 and bpp:  # uncompressed: the pixel array size is known
        stride = (width * bpp + 31) // 32 * 4
        if offset + stride * height > len(data):
            raise PhotoError(_TRUNCATED)
    return _Header("bmp", width, height)


# TIFF compressions FFmpeg's decoder handles: none, CCITT (3), LZW, Deflate (2), PackBits. Its
# JPEG-in-TIFF (6, 7) decodes to garbage, so it is refused like the ones it lacks.
_TIFF_COMPRESSIONS = frozenset({1, 2, 3, 4, 5, 8, 32773, 32946})
_TIFF_COMPRESSION_NAMES = {6: "JPEG", 7: "JPEG", 34925: "LZMA", 50000: "Zstandard", 50001: "WebP"}


def _parse_tiff(data: bytes) -> _Header:
    ifd = _TiffIfd(data)
    width, height = ifd.first(256), ifd.first(257)
    if width is None or height is None:
        raise PhotoError(_TRUNCATED)
    # Truncation: every strip (or tile) must lie inside the file.
    for offsets_tag, counts_tag in ((273, 279), (324, 325)):
        offsets, counts = ifd.values(offsets_tag), ifd.values(counts_tag)
        if offsets and counts and max(o + c for o, c in zip(offsets, counts)) > len(data):
            raise PhotoError(_TRUNCATED)
    compression = ifd.first(259) or 1
    if compression not in _TIFF_COMPRESSIONS:
        name = _TIFF_COMPRESSION_NAMES.get(compression, f"code {compression}")
        raise PhotoError(f"unsupported TIFF compression: {name}")
    orientation = ifd.first(274) or 1
    return _Header("tiff", width, height, orientation if 1 <= orientation <= 8 else 1)


def _exif_orientation(tiff: bytes) -> int:
    """EXIF orientation (1-8) from a TIFF-structured EXIF block; 1 if absent or unreadable."""
    try:
        value = _TiffIfd(tiff).first(274)
    except (PhotoError, struct.error, IndexError, ValueError):
        return 1  # broken EXIF must not make the picture unreadable
    return value if value is not None and 1 <= value <= 8 else 1


# TIFF field type -> struct code: BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG.
_TIFF_INT_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i"}


class _TiffIfd:
    """Integer-valued tags of the first IFD of a classic TIFF structure (file or EXIF block)."""

    def __init__(self, buf: bytes) -> None:
        if buf[:4] == b"II*\x00":
            self._endian = "<"
        elif buf[:4] == b"MM\x00*":
            self._endian = ">"
        else:
            raise PhotoError(_TRUNCATED)
        self._buf = buf
        (ifd_offset,) = struct.unpack_from(self._endian + "I", buf, 4)
        (count,) = struct.unpack_from(self._endian + "H", buf, ifd_offset)
        self._entries: dict[int, tuple[int, int, int]] = {}
        for i in range(count):
            entry = ifd_offset + 2 + 12 * i
            tag, ftype, n = struct.unpack_from(self._endian + "HHI", buf, entry)
            self._entries.setdefault(tag, (ftype, n, entry + 8))

    def values(self, tag: int) -> list[int]:
        """All values of an integer tag; [] when absent or not an integer type."""
        if tag not in self._entries:
            return []
        ftype, n, at = self._entries[tag]
        code = _TIFF_INT_TYPES.get(ftype)
        if code is None:
            return []
        size = struct.calcsize(code) * n
        if size > 4:  # values that do not fit in the entry live at an offset
            (at,) = struct.unpack_from(self._endian + "I", self._buf, at)
        return list(struct.unpack_from(f"{self._endian}{n}{code}", self._buf, at))

    def first(self, tag: int) -> int | None:
        vals = self.values(tag)
        return vals[0] if vals else None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

# suffix -> (encoder, holds alpha, holds 16 bits)
_WRITERS: dict[str, tuple[str, bool, bool]] = {
    ".jpg": ("mjpeg", False, False),
    ".jpeg": ("mjpeg", False, False),
    ".png": ("png", True, True),
    ".tif": ("tiff", True, True),
    ".tiff": ("tiff", True, True),
    ".webp": ("libwebp", True, False),
    ".bmp": ("bmp", False, False),
}


def write_photo(
    path: Path,
    rgb: np.ndarray,
    alpha: np.ndarray | None = None,
    bit_depth: int = 8,
    quality: int = 95,
) -> None:
    """Encode ``rgb`` (float (H, W, 3) sRGB in [0, 1], values outside clipped; or uint8 levels, written
    as they are) and optional ``alpha`` (float (H, W) in [0, 1]) to ``path``; the format follows the suffix.

    ``bit_depth`` 16 is honoured by PNG and TIFF (8 elsewhere) for float ``rgb``; alpha is dropped by JPEG and BMP.
    ``quality`` (1-100) applies to JPEG and WebP. The file appears atomically: on failure the
    destination is left as it was and no temporary file remains. Raises PhotoError for an
    unsupported suffix or a failed encode/write, ValueError for malformed arguments.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITERS:
        raise PhotoError(f"unsupported output format: {path.suffix or '(no suffix)'}")
    rgb, alpha = _check_arrays(rgb, alpha)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and rgb.dtype == np.uint8:
        raise ValueError("8-bit rgb cannot be written at bit_depth 16")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")

    codec, holds_alpha, holds_16 = _WRITERS[suffix]
    if not holds_alpha:
        alpha = None
    deep = bit_depth == 16 and holds_16
    data = _encode(codec, suffix.lstrip(".").upper(), rgb, alpha, deep, quality)
    _write_atomically(path, data)


def _check_arrays(rgb: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
    if not np.issubdtype(rgb.dtype, np.floating) and rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a float array in [0, 1] or uint8, got {rgb.dtype}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.shape != rgb.shape[:2]:
            raise ValueError(f"alpha must have shape {rgb.shape[:2]}, got {alpha.shape}")
        if not np.issubdtype(alpha.dtype, np.floating):
            raise ValueError(f"alpha must be a float array in [0, 1], got {alpha.dtype}")
    return rgb, alpha


def _quantize(values: np.ndarray, deep: bool) -> np.ndarray:
    """Float in [0, 1] (clipped, NaN -> 0) -> uint8 or uint16, rounded to nearest."""
    full, dtype = (65535, np.uint16) if deep else (255, np.uint8)
    clean = np.clip(np.nan_to_num(values.astype(np.float32), nan=0.0), 0.0, 1.0)
    return np.rint(clean * full).astype(dtype)


def _jpeg_qscale(quality: int) -> int:
    """Quality 1-100 -> mjpeg qscale 1-31, following libjpeg's quality scaling.

    FFmpeg quantises with the standard tables times qscale / 8, libjpeg with the tables times
    S / 100 where S = 5000 / quality (quality < 50) or 200 - 2 * quality; so qscale = S / 12.5:
    quality 50 -> 8, 75 -> 4, 90 -> 2, >= 94 -> 1 (the finest mjpeg offers).
    """
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return int(min(31, max(1, round(scale / 12.5))))


def _encode(codec: str, label: str, rgb: np.ndarray, alpha: np.ndarray | None, deep: bool, quality: int) -> bytes:
    """Encode to the bytes of a complete image file; ``label`` (e.g. 'JPG') names it in errors."""
    height, width = rgb.shape[:2]
    if codec == "libwebp":
        if codec not in av.codecs_available:
            raise PhotoError("WebP encoding is not available in this PyAV build")
        if width > _WEBP_MAX_SIDE or height > _WEBP_MAX_SIDE:
            raise PhotoError(f"image too large for WebP: {width}x{height} (limit 16383 per side)")

    samples = rgb if rgb.dtype == np.uint8 else _quantize(rgb, deep)
    if alpha is not None:
        samples = np.concatenate([samples, _quantize(alpha, deep)[..., None]], axis=2)
    src_format = {(False, False): "rgb24", (False, True): "rgba", (True, False): "rgb48le",
                  (True, True): "rgba64le"}[(deep, alpha is not None)]  # fmt: skip

    options: dict[str, str] = {}
    color_range = None
    if codec == "mjpeg":
        # Full-range 4:4:4: no chroma subsampling. qmin = qmax pins the quantiser.
        pix_fmt, color_range = "yuvj444p", ColorRange.JPEG
        q = str(_jpeg_qscale(quality))
        options = {"qmin": q, "qmax": q}
    elif codec == "png":
        pix_fmt = {"rgb24": "rgb24", "rgba": "rgba", "rgb48le": "rgb48be", "rgba64le": "rgba64be"}[src_format]
        # zlib level 3: within ~7 % of the default level's size at about a quarter of its time.
        options = {"pred": "paeth", "compression_level": "3"}
    elif codec == "tiff":
        pix_fmt = src_format
        options = {"compression_algo": "deflate"}
    elif codec == "libwebp":
        # libwebp converts from RGB itself; FFmpeg's yuv420p route would be limited range.
        pix_fmt = "bgra"
        options = {"quality": str(quality)}
        if alpha is None:
            samples = np.concatenate([samples, np.full((height, width, 1), 255, np.uint8)], axis=2)
            src_format = "rgba"
    else:  # bmp
        pix_fmt = "bgr24"

    try:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(samples), format=src_format)
        if pix_fmt != src_format:
            # JFIF's YCbCr is full-range BT.601.
            frame = frame.reformat(format=pix_fmt, dst_colorspace=Colorspace.ITU601, dst_color_range=color_range)
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
        ctx.time_base = Fraction(1, 1)
        if color_range is not None:
            ctx.color_range = color_range
        ctx.options = options
        packets = ctx.encode(frame)
        packets += ctx.encode(None)
    except MemoryError as exc:
        raise PhotoError("not enough memory to encode the image") from exc
    except (av.FFmpegError, ValueError) as exc:
        reason = " ".join(str(exc).split())  # FFmpeg's log tail may span lines
        raise PhotoError(f"cannot encode {label}: {reason}") from exc
    data = b"".join(bytes(p) for p in packets)
    if not data:
        raise PhotoError(f"cannot encode {label}: the encoder produced no data")
    return data


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it onto ``path``; OS failures become one-line ``PhotoError``."""
    try:
        write_bytes(path, data, parents=False)  # a missing folder is the caller's mistake, said below
    except FileNotFoundError as exc:
        raise PhotoError("cannot write: the directory does not exist") from exc
    except OSError as exc:
        raise PhotoError(f"cannot write: {os_reason(exc)}") from exc
