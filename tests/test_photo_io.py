"""Tests for engines.media.photo_io: decoding and encoding still images with PyAV.

Every input is made here in tmp_path: with Pillow or OpenCV (independent encoders) for reading,
and checked with OpenCV or Pillow (independent decoders) after writing.
"""

from __future__ import annotations

import errno
import os
import struct
import time
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from engines import files
from engines.media import photo_io
from engines.media.formats import IMAGE_SUFFIXES
from engines.media.photo_io import MAX_PIXELS, Photo, PhotoError, read_photo, write_photo

RNG_SEED = 1234


# --- inputs -------------------------------------------------------------------------------------


def _noise_u8(h: int, w: int, c: int = 3, seed: int = RNG_SEED) -> np.ndarray:
    """Uniform random uint8 samples: any lossless codec must return them bit for bit."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _busy_photo(h: int = 96, w: int = 144, seed: int = RNG_SEED, blur: float = 2) -> np.ndarray:
    """uint8 (h, w, 3) with lots of colour detail (blurred, contrast-stretched noise): chroma
    subsampling and upsampling mistakes show up clearly on it. A larger ``blur`` is more photo-like."""
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    smooth = cv2.GaussianBlur(noise, (0, 0), blur).astype(np.float32)
    return np.clip((smooth - smooth.mean()) * 4 + 128, 0, 255).round().astype(np.uint8)


def _blocks(h: int = 32, w: int = 48) -> np.ndarray:
    """uint8 (h, w, 3) of flat 8x8 blocks in distinct colours: not symmetric under any flip or
    rotation, and JPEG (4:4:4, high quality) keeps flat aligned blocks nearly exact."""
    rows, cols = h // 8, w // 8
    idx = np.arange(rows * cols).reshape(rows, cols)
    colours = np.stack([(idx * 37) % 256, (idx * 91 + 40) % 256, (idx * 53 + 200) % 256], axis=-1)
    return np.kron(colours, np.ones((8, 8, 1))).astype(np.uint8)


def _save_pil(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _cv2_rgb(path: Path) -> np.ndarray:
    """Independent decode with OpenCV, channels flipped to RGB(A), dtype kept."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"OpenCV cannot read {path.name}"
    if img.ndim == 3:
        img = img[..., [2, 1, 0, 3][: img.shape[2]]]
    return img


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _jpeg_sampling(data: bytes) -> list[tuple[int, int]]:
    """(h, v) sampling factors of each component in the JPEG's SOF segment."""
    pos = 2
    while True:
        marker, length = data[pos + 1], struct.unpack_from(">H", data, pos + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2):
            n = data[pos + 9]
            return [(data[pos + 11 + 3 * i] >> 4, data[pos + 11 + 3 * i] & 15) for i in range(n)]
        pos += 2 + length


def _u8(photo_channels: np.ndarray) -> np.ndarray:
    return np.rint(photo_channels * 255).astype(np.int32)


def _u16(photo_channels: np.ndarray) -> np.ndarray:
    return np.rint(photo_channels * 65535).astype(np.int32)


# --- write -> read round trips ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_lossless_round_trip_is_exact(tmp_path, suffix, bit_depth, with_alpha):
    full = 65535 if bit_depth == 16 else 255
    rng = np.random.default_rng(RNG_SEED)
    ints = rng.integers(0, full + 1, (13, 17, 4))
    rgb = (ints[..., :3] / full).astype(np.float32)
    alpha = (ints[..., 3] / full).astype(np.float32) if with_alpha else None
    path = tmp_path / f"out{suffix}"

    write_photo(path, rgb, alpha, bit_depth=bit_depth)

    photo = read_photo(path)
    assert photo.bit_depth == bit_depth
    assert photo.rgb.dtype == np.float32 and photo.rgb.shape == (13, 17, 3)
    to_int = _u16 if bit_depth == 16 else _u8
    np.testing.assert_array_equal(to_int(photo.rgb), ints[..., :3])
    if with_alpha:
        assert photo.alpha is not None and photo.alpha.dtype == np.float32
        np.testing.assert_array_equal(to_int(photo.alpha), ints[..., 3])
    else:
        assert photo.alpha is None

    # Independent decoders see the same samples. (OpenCV premultiplies 8-bit RGBA TIFFs, so
    # Pillow checks those.)
    if suffix != ".png" and bit_depth == 8 and with_alpha:
        independent = np.asarray(Image.open(path))
        assert Image.open(path).mode == "RGBA"
    else:
        independent = _cv2_rgb(path)
        assert independent.dtype == (np.uint16 if bit_depth == 16 else np.uint8)
    expected = ints if with_alpha else ints[..., :3]
    np.testing.assert_array_equal(independent.astype(np.int64), expected)


def test_16_bit_values_are_not_quantised_to_8_bits(tmp_path):
    values = np.linspace(0.001, 0.999, 5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    for suffix in (".png", ".tif"):
        path = tmp_path / f"deep{suffix}"
        write_photo(path, values, bit_depth=16)
        photo = read_photo(path)
        assert photo.bit_depth == 16
        np.testing.assert_allclose(photo.rgb, values, atol=0.6 / 65535)
        # 8-bit quantisation would be off by up to 0.5/255 = 128/65535.
        assert np.abs(photo.rgb * 255 - np.rint(photo.rgb * 255)).max() > 0.1


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG", ".webp"])
def test_lossy_round_trip_is_close(tmp_path, suffix):
    original = _busy_photo(blur=4).astype(np.float32) / 255
    path = tmp_path / f"photo{suffix}"
    write_photo(path, original, quality=95)

    photo = read_photo(path)
    assert photo.bit_depth == 8 and photo.alpha is None
    assert photo.rgb.shape == original.shape
    mean_error = np.abs(photo.rgb - original).mean()
    limit = 2 / 255 if suffix.lower() != ".webp" else 4 / 255  # WebP is always 4:2:0
    assert mean_error < limit
    # The independent decoder agrees with our decode, not just with the original.
    independent = _cv2_rgb(path).astype(np.float32) / 255
    assert np.abs(independent - photo.rgb).mean() < 0.5 / 255


def test_jpeg_is_written_without_chroma_subsampling(tmp_path):
    path = tmp_path / "full_chroma.jpg"
    write_photo(path, _busy_photo().astype(np.float32) / 255)
    sampling = _jpeg_sampling(path.read_bytes())
    assert len(sampling) == 3 and len(set(sampling)) == 1  # equal factors: chroma at full size


def test_jpeg_quality_controls_size_and_fidelity(tmp_path):
    original = _busy_photo().astype(np.float32) / 255
    errors, sizes = {}, {}
    for quality in (20, 60, 95):
        path = tmp_path / f"q{quality}.jpg"
        write_photo(path, original, quality=quality)
        sizes[quality] = path.stat().st_size
        errors[quality] = np.abs(read_photo(path).rgb - original).mean()
    assert sizes[20] < sizes[60] < sizes[95]
    assert errors[20] > errors[60] > errors[95]


def test_webp_alpha_round_trip(tmp_path):
    original = _busy_photo().astype(np.float32) / 255
    alpha = np.tile(np.linspace(0, 1, original.shape[1], dtype=np.float32), (original.shape[0], 1))
    path = tmp_path / "alpha.webp"
    write_photo(path, original, alpha)
    photo = read_photo(path)
    assert photo.alpha is not None
    assert np.abs(photo.alpha - alpha).max() <= 1 / 255  # libwebp keeps alpha losslessly
    assert _cv2_rgb(path).shape[2] == 4


def test_webp_unavailable_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", frozenset(av.codecs_available) - {"libwebp"})
    with pytest.raises(PhotoError, match="WebP encoding is not available"):
        write_photo(tmp_path / "x.webp", np.zeros((4, 4, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_bmp_round_trip_is_exact_and_drops_alpha(tmp_path):
    ints = _noise_u8(9, 14)
    path = tmp_path / "out.bmp"
    write_photo(path, ints / np.float32(255), alpha=np.full((9, 14), 0.5, np.float32))
    photo = read_photo(path)
    assert photo.alpha is None and photo.bit_depth == 8
    np.testing.assert_array_equal(_u8(photo.rgb), ints)
    np.testing.assert_array_equal(_cv2_rgb(path), ints)


def test_jpeg_drops_alpha_and_writes_8_bits(tmp_path):
    path = tmp_path / "out.jpg"
    rgb = _busy_photo().astype(np.float32) / 255
    write_photo(path, rgb, alpha=np.zeros(rgb.shape[:2], np.float32), bit_depth=16)
    photo = read_photo(path)
    assert photo.alpha is None and photo.bit_depth == 8
    assert np.abs(photo.rgb - rgb).mean() < 2 / 255  # alpha 0 did not blank the colours


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (5, 3)])
def test_tiny_and_odd_sizes(tmp_path, suffix, shape):
    h, w = shape
    rgb = np.random.default_rng(7).random((h, w, 3), dtype=np.float32)
    path = tmp_path / f"tiny{suffix}"
    write_photo(path, rgb)
    photo = read_photo(path)
    assert photo.rgb.shape == (h, w, 3)
    assert _cv2_rgb(path).shape[:2] == (h, w)
    if suffix in (".png", ".tif", ".tiff", ".bmp"):
        np.testing.assert_array_equal(_u8(photo.rgb), np.rint(rgb * 255))


def test_out_of_range_and_nan_are_clipped(tmp_path):
    rgb = np.array([[[-0.5, 1.5, np.nan], [0.25, 0.5, 2.0]]], np.float32)
    path = tmp_path / "clip.png"
    write_photo(path, rgb)
    np.testing.assert_array_equal(_u8(read_photo(path).rgb), [[[0, 255, 0], [64, 128, 255]]])


def test_successful_write_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "final.png"
    path.write_bytes(b"old content")
    write_photo(path, np.zeros((2, 2, 3), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.png"]
    assert read_photo(path).rgb.shape == (2, 2, 3)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_uint8_rgb_is_written_as_the_same_levels_in_float(tmp_path, suffix):
    levels = _busy_photo(24, 40)
    write_photo(tmp_path / f"u8{suffix}", levels, alpha=np.full((24, 40), 0.5, np.float32))
    write_photo(tmp_path / f"float{suffix}", levels.astype(np.float32) / 255, alpha=np.full((24, 40), 0.5, np.float32))
    assert (tmp_path / f"u8{suffix}").read_bytes() == (tmp_path / f"float{suffix}").read_bytes()


def test_invalid_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError):
        write_photo(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        write_photo(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint16))  # integers: uint8 levels only
    with pytest.raises(ValueError):
        write_photo(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8), bit_depth=16)
    with pytest.raises(ValueError):
        write_photo(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32), alpha=np.zeros((4, 5)))
    with pytest.raises(ValueError):
        write_photo(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32), bit_depth=12)
    with pytest.raises(ValueError):
        write_photo(tmp_path / "a.jpg", np.zeros((4, 4, 3), np.float32), quality=0)
    assert list(tmp_path.iterdir()) == []


# --- write failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.xyz", "out", "out.gif"])
def test_unsupported_output_suffix(tmp_path, name):
    with pytest.raises(PhotoError, match="unsupported output format"):
        write_photo(tmp_path / name, np.zeros((2, 2, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_unsupported_output_suffix_message_names_it(tmp_path):
    with pytest.raises(PhotoError, match=r"^unsupported output format: \.xyz$"):
        write_photo(tmp_path / "a.xyz", np.zeros((2, 2, 3), np.float32))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_write_into_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(PhotoError, match="cannot write: permission denied"):
            write_photo(locked / "out.png", np.zeros((2, 2, 3), np.float32))
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_permission_denied_on_temporary_file(tmp_path, monkeypatch):
    """What a read-only directory does for non-root users, simulated so it also runs as root."""

    def deny(file, mode="r", *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

    unreadable = tmp_path / "in" / "whatever.png"
    unreadable.parent.mkdir()
    unreadable.write_bytes(b"\x89PNG")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(photo_io, "open", deny, raising=False)  # reading
    monkeypatch.setattr(files, "open", deny, raising=False)  # writing: engines.files makes the temporary file
    with pytest.raises(PhotoError, match="^cannot write: permission denied$"):
        write_photo(out_dir / "out.png", np.zeros((2, 2, 3), np.float32))
    with pytest.raises(PhotoError, match="^permission denied$"):
        read_photo(unreadable)
    assert list(out_dir.iterdir()) == []


def test_write_into_missing_directory(tmp_path):
    with pytest.raises(PhotoError, match="cannot write"):
        write_photo(tmp_path / "missing" / "out.png", np.zeros((2, 2, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_removes_temporary_and_keeps_destination(tmp_path, monkeypatch):
    """A disk-full error after the temporary file exists: it is removed, the old file stays."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"precious old bytes")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(PhotoError, match="^cannot write: no space left on device$"):
        write_photo(path, np.zeros((8, 8, 3), np.float32))
    assert path.read_bytes() == b"precious old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]


def test_failed_rename_keeps_destination(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    path.write_bytes(b"precious old bytes")
    seen = []

    def refuse(src, dst):
        seen.append(Path(src))
        assert Path(src).exists() and Path(src).parent == path.parent  # temp file beside the target
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PhotoError, match="^cannot write: permission denied$"):
        write_photo(path, np.zeros((8, 8, 3), np.float32))
    assert seen and seen[0].name.startswith(".photo.png.tmp-")
    assert path.read_bytes() == b"precious old bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_interrupted_write_removes_temporary(tmp_path, monkeypatch):
    def interrupt(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_photo(tmp_path / "out.png", np.zeros((2, 2, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_destination_is_a_directory(tmp_path):
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(PhotoError, match="cannot write"):
        write_photo(tmp_path / "taken.png", np.zeros((2, 2, 3), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


# --- reading files made by other encoders -------------------------------------------------------


def test_jpeg_colour_matches_opencv(tmp_path):
    """Full-range BT.601 and chroma upsampling as libjpeg does them (default 4:2:0 JPEG)."""
    path = _save_pil(_busy_photo(97, 143), tmp_path / "busy.jpg", quality=90)
    photo = read_photo(path)
    reference = _cv2_rgb(path).astype(np.float32) / 255
    assert photo.rgb.shape == reference.shape
    assert np.abs(photo.rgb - reference).mean() < 0.5 / 255
    assert np.abs(photo.rgb - reference).max() <= 6 / 255


@pytest.mark.parametrize("kwargs", [{"progressive": True}, {"subsampling": 1}, {"subsampling": 0}])
def test_jpeg_variants_match_opencv(tmp_path, kwargs):
    path = _save_pil(_busy_photo(61, 91), tmp_path / "variant.jpg", quality=85, **kwargs)
    reference = _cv2_rgb(path).astype(np.float32) / 255
    assert np.abs(read_photo(path).rgb - reference).mean() < 0.5 / 255


def test_grayscale_jpeg_is_replicated(tmp_path):
    gray = cv2.cvtColor(_busy_photo(), cv2.COLOR_RGB2GRAY)
    path = _save_pil(gray, tmp_path / "gray.jpg", quality=90)
    photo = read_photo(path)
    assert photo.rgb.shape == gray.shape + (3,)
    np.testing.assert_array_equal(photo.rgb[..., 0], photo.rgb[..., 1])
    np.testing.assert_array_equal(photo.rgb[..., 0], photo.rgb[..., 2])
    reference = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    assert np.abs(photo.rgb[..., 0] - reference).mean() < 0.5 / 255


def test_cmyk_jpeg_is_converted_or_refused(tmp_path):
    original = _busy_photo()
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(original).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    try:
        photo = read_photo(path)
    except PhotoError as exc:  # acceptable, as long as it is a clear error
        assert "\n" not in str(exc) and str(exc)
        return
    assert photo.alpha is None and photo.rgb.shape == original.shape
    assert np.abs(photo.rgb - original / 255).mean() < 3 / 255


def test_png_modes(tmp_path):
    rgb = _noise_u8(6, 10)
    gray = rgb[..., 0]
    alpha = rgb[..., 1]

    photo = read_photo(_save_pil(gray, tmp_path / "l.png"))
    np.testing.assert_array_equal(_u8(photo.rgb), np.repeat(gray[..., None], 3, axis=2))
    assert photo.alpha is None and photo.bit_depth == 8

    photo = read_photo(_save_pil(np.dstack([gray, alpha]), tmp_path / "la.png"))
    assert Image.open(tmp_path / "la.png").mode == "LA"
    np.testing.assert_array_equal(_u8(photo.rgb), np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(_u8(photo.alpha), alpha)

    photo = read_photo(_save_pil(np.dstack([rgb, alpha]), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(_u8(photo.rgb), rgb)
    np.testing.assert_array_equal(_u8(photo.alpha), alpha)

    opaque = np.dstack([rgb, np.full_like(gray, 255)])
    photo = read_photo(_save_pil(opaque, tmp_path / "opaque.png"))
    assert photo.alpha is not None and (photo.alpha == 1).all()  # the file has an alpha channel


def test_16_bit_png_and_tiff_from_opencv(tmp_path):
    rng = np.random.default_rng(5)
    deep = rng.integers(0, 65536, (7, 9, 4), dtype=np.uint16)
    for name, channels in [("rgb16.png", 3), ("rgba16.png", 4), ("rgb16.tif", 3), ("rgba16.tif", 4)]:
        bgr = deep[..., [2, 1, 0, 3][:channels]]
        assert cv2.imwrite(str(tmp_path / name), bgr)
        photo = read_photo(tmp_path / name)
        assert photo.bit_depth == 16, name
        np.testing.assert_array_equal(_u16(photo.rgb), deep[..., :3])
        if channels == 4:
            np.testing.assert_array_equal(_u16(photo.alpha), deep[..., 3])
        else:
            assert photo.alpha is None
    gray16 = deep[..., 0]
    Image.fromarray(gray16.astype(np.int32), "I").convert("I;16").save(tmp_path / "g16.png")
    photo = read_photo(tmp_path / "g16.png")
    assert photo.bit_depth == 16
    np.testing.assert_array_equal(_u16(photo.rgb), np.repeat(gray16[..., None], 3, axis=2))


def test_palette_png_colours_and_transparency(tmp_path):
    palette = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30], [250, 240, 5]], np.uint8)
    index = np.random.default_rng(3).integers(0, 4, (7, 11)).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "pal.png")
    photo = read_photo(tmp_path / "pal.png")
    assert photo.alpha is None and photo.bit_depth == 8
    np.testing.assert_array_equal(_u8(photo.rgb), palette[index])

    image.save(tmp_path / "pal_trns.png", transparency=2)  # index 2 fully transparent (tRNS)
    photo = read_photo(tmp_path / "pal_trns.png")
    np.testing.assert_array_equal(_u8(photo.rgb), palette[index])
    assert photo.alpha is not None
    np.testing.assert_array_equal(photo.alpha, np.where(index == 2, 0.0, 1.0))


def test_tiff_bmp_webp_inputs(tmp_path):
    rgb = _noise_u8(6, 10)
    rgba = np.dstack([rgb, _noise_u8(6, 10, 1, seed=9)])
    cases = [
        ("lzw.tif", rgb, {"compression": "tiff_lzw"}),
        ("deflate_rgba.tif", rgba, {"compression": "tiff_adobe_deflate"}),
        ("rgb.bmp", rgb, {}),
        ("rgba.bmp", rgba, {}),
        ("lossless.webp", rgb, {"lossless": True}),
        ("lossless_rgba.webp", rgba, {"lossless": True, "exact": True}),
    ]
    for name, array, kwargs in cases:
        photo = read_photo(_save_pil(array, tmp_path / name, **kwargs))
        np.testing.assert_array_equal(_u8(photo.rgb), array[..., :3], err_msg=name)
        if array.shape[2] == 4:
            np.testing.assert_array_equal(_u8(photo.alpha), array[..., 3], err_msg=name)
        else:
            assert photo.alpha is None, name


@pytest.mark.parametrize("lossless", [False, True])
@pytest.mark.parametrize("extended", [False, True])
def test_webp_without_alpha_reports_none(tmp_path, lossless, extended):
    """FFmpeg decodes lossless WebP as argb even without alpha: the header decides."""
    original = _busy_photo()
    # With EXIF the file gets the extended (VP8X) layout, whose flags say whether alpha exists.
    kwargs = {"exif": Image.Exif()} if extended else {}
    if extended:
        kwargs["exif"][0x010F] = "test camera"
    path = _save_pil(original, tmp_path / "rgb.webp", quality=90, lossless=lossless, **kwargs)
    assert (b"VP8X" in path.read_bytes()[:40]) == extended
    photo = read_photo(path)
    assert photo.alpha is None
    reference = _cv2_rgb(path).astype(np.float32) / 255
    assert np.abs(photo.rgb - reference).mean() < 0.5 / 255  # libwebp's own upsampling


def test_jpeg_compressed_tiff_is_refused_not_garbled(tmp_path):
    path = _save_pil(_blocks(), tmp_path / "jpeg.tif", compression="jpeg")
    with pytest.raises(PhotoError, match="unsupported TIFF compression: JPEG"):
        read_photo(path)


def test_format_detected_from_content_not_name(tmp_path):
    rgb = _noise_u8(5, 6)
    png_as_jpg = tmp_path / "actually_png.jpg"
    Image.fromarray(rgb).save(png_as_jpg, format="PNG")
    np.testing.assert_array_equal(_u8(read_photo(png_as_jpg).rgb), rgb)

    jpg_as_png = tmp_path / "actually_jpeg.png"
    Image.fromarray(_busy_photo()).save(jpg_as_png, format="JPEG", quality=95)
    reference = _cv2_rgb(jpg_as_png).astype(np.float32) / 255
    assert np.abs(read_photo(jpg_as_png).rgb - reference).mean() < 0.5 / 255


def test_gif_and_video_first_frame(tmp_path):
    rgb = _noise_u8(6, 10)
    palette_image = Image.fromarray(rgb).quantize(16)
    palette_image.save(tmp_path / "still.gif")
    photo = read_photo(tmp_path / "still.gif")
    np.testing.assert_array_equal(_u8(photo.rgb), np.asarray(palette_image.convert("RGB")))
    assert photo.alpha is None

    # Three different frames, losslessly coded: the first one comes back.
    frames = [_noise_u8(16, 24, seed=s) for s in (1, 2, 3)]
    video = tmp_path / "clip.mkv"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 24, 16, "bgr0"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="bgr0")))
        container.mux(stream.encode(None))
    np.testing.assert_array_equal(_u8(read_photo(video).rgb), frames[0])


# --- EXIF orientation ---------------------------------------------------------------------------

_EXPECTED_ROTATION = {3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation(tmp_path, orientation):
    original = _blocks()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save_pil(original, tmp_path / f"o{orientation}.jpg", quality=100, subsampling=0, exif=exif)

    photo = read_photo(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path))).astype(np.float32) / 255
    assert photo.rgb.shape == expected.shape
    assert np.abs(photo.rgb - expected).max() < 4 / 255
    if orientation in _EXPECTED_ROTATION:
        rotated = _EXPECTED_ROTATION[orientation](original).astype(np.float32) / 255
        assert np.abs(photo.rgb - rotated).mean() < 2 / 255


@pytest.mark.parametrize(
    "name, kwargs",
    [("o.png", {}), ("o.tif", {}), ("o.webp", {"lossless": True})],
)
def test_exif_orientation_in_png_tiff_webp(tmp_path, name, kwargs):
    original = np.dstack([_noise_u8(6, 10), _noise_u8(6, 10, 1, seed=4)])
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save_pil(original, tmp_path / name, exif=exif, **kwargs)
    photo = read_photo(path)
    expected = np.rot90(original, -1)
    np.testing.assert_array_equal(_u8(photo.rgb), expected[..., :3])
    np.testing.assert_array_equal(_u8(photo.alpha), expected[..., 3])


def test_big_endian_exif_orientation(tmp_path):
    """Hand-made Motorola-order EXIF (Pillow writes Intel order) with orientation 8."""
    data = _save_pil(_blocks(), tmp_path / "plain.jpg", quality=100, subsampling=0).read_bytes()
    ifd = struct.pack(">HHHIHHI", 1, 0x0112, 3, 1, 8, 0, 0)  # one SHORT entry, value 8, no next IFD
    exif = b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    (tmp_path / "mm.jpg").write_bytes(data[:2] + app1 + data[2:])
    photo = read_photo(tmp_path / "mm.jpg")
    expected = np.rot90(_blocks(), 1).astype(np.float32) / 255
    assert photo.rgb.shape == expected.shape
    assert np.abs(photo.rgb - expected).mean() < 2 / 255


def test_broken_exif_does_not_break_the_image(tmp_path):
    jpeg = tmp_path / "plain.jpg"
    _save_pil(_blocks(), jpeg, quality=95)
    data = jpeg.read_bytes()
    garbage = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f" + b"\x00" * 8
    bad_app1 = b"\xff\xe1" + struct.pack(">H", len(garbage) + 2) + garbage
    (tmp_path / "bad_exif.jpg").write_bytes(data[:2] + bad_app1 + data[2:])
    photo = read_photo(tmp_path / "bad_exif.jpg")
    assert photo.rgb.shape == (32, 48, 3)


# --- bad input ----------------------------------------------------------------------------------


def test_text_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not the pixels you are looking for\n" * 20)
    with pytest.raises(PhotoError, match="not an image"):
        read_photo(path)


def test_text_starting_with_bm(tmp_path):
    path = tmp_path / "car.bmp"
    path.write_text("BMW and other cars, a list of thoughts that is long enough\n" * 3)
    with pytest.raises(PhotoError, match="not an image"):
        read_photo(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(PhotoError, match="empty file"):
        read_photo(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PhotoError, match="file not found"):
        read_photo(tmp_path / "nope.jpg")
    with pytest.raises(PhotoError, match="is a directory"):
        read_photo(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path):
    path = _save_pil(_noise_u8(4, 4), tmp_path / "secret.png")
    path.chmod(0)
    try:
        with pytest.raises(PhotoError, match="permission denied"):
            read_photo(path)
    finally:
        path.chmod(0o644)


def _valid_files(tmp_path: Path) -> dict[str, Path]:
    photo = _busy_photo(40, 56)
    return {
        "jpg": _save_pil(photo, tmp_path / "v.jpg", quality=90),
        "progressive.jpg": _save_pil(photo, tmp_path / "vp.jpg", quality=90, progressive=True),
        "png": _save_pil(photo, tmp_path / "v.png"),
        "tif": _save_pil(photo, tmp_path / "v.tif"),
        "webp": _save_pil(photo, tmp_path / "v.webp", quality=80),
        "bmp": _save_pil(photo, tmp_path / "v.bmp"),
    }


def test_truncated_files_are_refused(tmp_path):
    for path in _valid_files(tmp_path).values():
        data = path.read_bytes()
        read_photo(path)  # the complete file is fine
        for keep in (len(data) // 2, len(data) - 20, len(data) * 9 // 10):
            cut = tmp_path / f"cut_{keep}_{path.name}"
            cut.write_bytes(data[:keep])
            with pytest.raises(PhotoError, match="truncated or corrupt"):
                read_photo(cut)


def test_jpeg_without_eoi_and_png_without_iend(tmp_path):
    files = _valid_files(tmp_path)
    jpeg = files["jpg"].read_bytes()
    assert jpeg.endswith(b"\xff\xd9")
    (tmp_path / "no_eoi.jpg").write_bytes(jpeg[:-2])
    with pytest.raises(PhotoError, match="truncated"):
        read_photo(tmp_path / "no_eoi.jpg")
    png = files["png"].read_bytes()
    assert png.endswith(_png_chunk(b"IEND", b""))
    (tmp_path / "no_iend.png").write_bytes(png[:-12])
    with pytest.raises(PhotoError, match="truncated"):
        read_photo(tmp_path / "no_iend.png")


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for i, size in enumerate((1, 7, 100, 5000)):
        path = tmp_path / f"random{i}.png"
        path.write_bytes(rng.bytes(size))
        with pytest.raises(PhotoError):
            read_photo(path)


def test_damaged_headers_never_escape_as_other_exceptions(tmp_path):
    """Cut or scribbled-on headers: a PhotoError or a decoded Photo, nothing else."""
    rng = np.random.default_rng(11)
    outcomes = {"error": 0, "photo": 0}
    for path in _valid_files(tmp_path).values():
        data = path.read_bytes()
        variants = [data[:n] for n in (2, 3, 9, 17, 30, 60)]
        for _ in range(12):
            damaged = bytearray(data)
            for pos in rng.integers(2, min(len(data), 200), 3):
                damaged[pos] = rng.integers(0, 256)
            variants.append(bytes(damaged))
        for n, variant in enumerate(variants):
            bad = tmp_path / f"bad_{n}_{path.name}"
            bad.write_bytes(variant)
            try:
                result = read_photo(bad)
            except PhotoError as exc:
                assert "\n" not in str(exc)
                outcomes["error"] += 1
            else:
                assert isinstance(result, Photo) and result.rgb.ndim == 3
                outcomes["photo"] += 1
    assert outcomes["error"] > 0


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(PhotoError, match=r"^image too large: 100000x100000 pixels \(limit 100 megapixels\)$"):
        read_photo(path)


def test_decompression_bomb_jpeg_header(tmp_path):
    data = bytearray(_save_pil(_blocks(), tmp_path / "small.jpg", quality=90).read_bytes())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 40_000, 30_000)  # height, width
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    with pytest.raises(PhotoError, match="image too large: 30000x40000"):
        read_photo(tmp_path / "bomb.jpg")


def test_max_pixels_argument(tmp_path):
    path = _save_pil(_noise_u8(10, 20), tmp_path / "small.png")
    assert read_photo(path, max_pixels=200).rgb.shape == (10, 20, 3)
    with pytest.raises(PhotoError, match=r"image too large: 20x10 pixels \(limit 0.000199 megapixels\)"):
        read_photo(path, max_pixels=199)


def test_zero_size_header(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    (tmp_path / "zero.png").write_bytes(data)
    with pytest.raises(PhotoError, match="invalid image size: 0x0"):
        read_photo(tmp_path / "zero.png")


# --- API shape and speed ------------------------------------------------------------------------


def test_public_constants():
    assert set(IMAGE_SUFFIXES) == {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}
    assert MAX_PIXELS == 100_000_000
    assert photo_io.read_photo.__defaults__ == (MAX_PIXELS,)


def test_photo_arrays_are_float32_in_range_and_contiguous(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    path = _save_pil(_busy_photo(), tmp_path / "p.jpg", exif=exif)
    photo = read_photo(path)
    assert photo.rgb.dtype == np.float32 and photo.rgb.flags.c_contiguous
    assert 0.0 <= photo.rgb.min() and photo.rgb.max() <= 1.0


def test_jpeg_decoding_is_quick(tmp_path):
    path = _save_pil(_busy_photo(321, 481), tmp_path / "bsds_sized.jpg", quality=90)
    read_photo(path)  # warm-up
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        read_photo(path)
        timings.append(time.perf_counter() - start)
    # A few milliseconds normally; generous bound for a loaded CI machine.
    assert min(timings) < 0.1


def test_special_files_are_refused_without_blocking(tmp_path):
    """A FIFO would block a reader forever and a device never ends: neither is opened."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(PhotoError, match="not a regular file"):
        read_photo(fifo)
    dev = tmp_path / "zero.jpg"
    dev.symlink_to("/dev/zero")
    with pytest.raises(PhotoError, match="not a regular file"):
        read_photo(dev)
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    with pytest.raises(PhotoError):
        read_photo(loop)


@pytest.mark.parametrize("kind", ["jpeg-gray", "jpeg-rgb", "png-rgb", "png-rgba", "png-palette", "tiff-16bit"])
def test_levels_are_the_float_photo_as_uint8(tmp_path, kind):
    """``read_photo(levels=True)``: an 8-bit photo's rgb is its levels, exactly the float read times 255
    (every path: gray and 4:2:0 JPEG, RGB, RGBA, palette PNG) with alpha as before; a 16-bit photo stays float."""
    busy = _busy_photo(48, 64)
    if kind == "jpeg-gray":
        path = _save_pil(busy[..., 0], tmp_path / "a.jpg", quality=90)
    elif kind == "jpeg-rgb":
        path = _save_pil(busy, tmp_path / "a.jpg", quality=90)
    elif kind == "png-rgb":
        path = _save_pil(busy, tmp_path / "a.png")
    elif kind == "png-rgba":
        path = _save_pil(np.dstack([busy, busy[..., 1]]), tmp_path / "a.png")
    elif kind == "png-palette":
        path = tmp_path / "a.png"
        Image.fromarray(busy).quantize(16).save(path)
    else:
        path = tmp_path / "a.tiff"
        cv2.imwrite(str(path), (busy.astype(np.uint16) * 257)[..., ::-1])
    as_float, as_levels = read_photo(path), read_photo(path, levels=True)
    assert as_levels.bit_depth == as_float.bit_depth and as_levels.rgb.shape == as_float.rgb.shape
    if as_float.alpha is None:
        assert as_levels.alpha is None
    else:
        np.testing.assert_array_equal(as_levels.alpha, as_float.alpha)
    if kind == "tiff-16bit":
        assert as_float.bit_depth == 16 and as_levels.rgb.dtype == np.float32
        np.testing.assert_array_equal(as_levels.rgb, as_float.rgb)
    else:
        assert as_levels.rgb.dtype == np.uint8 and as_levels.rgb.flags.c_contiguous
        np.testing.assert_array_equal(as_levels.rgb, np.rint(as_float.rgb * 255).astype(np.uint8))
