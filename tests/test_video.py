"""The video pipeline (engines.video.film) and temporal consistency (engines.video.temporal), on tiny clips made here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from engines import color
from engines.models.unet import UNet, UNetConfig
from engines.pipeline import Colorizer
from engines.video import temporal
from engines.video.film import VideoOptions, colorize_video
from engines.video.stages import _FrameLightness, _plane_u8, compose_rgb, compose_yuv420, lightness_of_rgb_u8
from engines.video.streams import VideoError, _frame_to_rgb, encoder_frame_to_rgb, is_video, rgb_to_encoder_frame

NTSC = Fraction(30000, 1001)
FAST = VideoOptions(crf=1, batch_size=4)


# --- clips ------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, h: int, w: int, colour: bool = True) -> np.ndarray:
    """A smooth random RGB float image (H, W, 3) in [0, 1]: blobs that optical flow can follow."""
    small = rng.random((max(2, h // 8), max(2, w // 8), 3 if colour else 1)).astype(np.float32)
    t = torch.from_numpy(small).permute(2, 0, 1)[None]
    big = torch.nn.functional.interpolate(t, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    img = big.clamp(0, 1).numpy()
    return np.repeat(img, 3, axis=2) if not colour else img


def make_clip(
    path: Path,
    frames: list[np.ndarray] | None = None,
    n: int = 12,
    size: tuple[int, int] = (64, 48),
    rate: Fraction = NTSC,
    time_base: Fraction = Fraction(1, 30000),
    pts: list[int] | None = None,
    audio: str | None = None,
    rotation: float | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    seed: int = 0,
    fmt: str | None = None,
) -> list[int]:
    """Write a clip (frames: uint8 RGB (H, W, 3)); returns the video pts written."""
    w, h = size
    if frames is None:
        rng = np.random.default_rng(seed)
        base = _texture(rng, h, w)
        frames = [(np.roll(base, i, axis=1) * 255).round().astype(np.uint8) for i in range(n)]
    step = round(1 / (rate * time_base))
    pts = pts if pts is not None else [i * step for i in range(len(frames))]
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream(codec, rate=rate)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        v.time_base = v.codec_context.time_base = time_base
        if codec == "libx264":
            v.options = {"crf": "1"}
        if rotation is not None:
            v.set_display_rotation(rotation)
        a = None
        if audio:
            a = out.add_stream(audio, rate=48000)
            a.layout = "stereo"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = pts[i], time_base
            frame.duration = (pts[i + 1] - pts[i]) if i + 1 < len(pts) else step
            for p in v.encode(frame):
                out.mux(p)
        if a is not None:
            seconds = (pts[-1] + step) * time_base
            fmt, dtype = ("fltp", np.float32) if audio != "pcm_s16le" else ("s16p", np.int16)
            scale = 0.3 if dtype == np.float32 else 8000
            for k in range(int(seconds * 48000) // 1024):
                t = (np.arange(1024) + k * 1024) / 48000
                samples = (np.sin(2 * np.pi * 440 * t) * scale).astype(dtype)
                af = av.AudioFrame.from_ndarray(np.stack([samples, samples]), format=fmt, layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48000, k * 1024, Fraction(1, 48000)
                for p in a.encode(af):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
    return pts


def decode_rgb(path: Path) -> list[np.ndarray]:
    """Frames as float32 RGB (H, W, 3) in [0, 1], converted with the stream's declared matrix/range."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            cs = (
                av.video.reformatter.Colorspace.ITU709
                if int(f.colorspace) == 1
                else av.video.reformatter.Colorspace.ITU601
            )
            rgb = f.to_ndarray(format="rgb24", src_colorspace=cs, src_color_range=f.color_range or 1)
            out.append(rgb.astype(np.float32) / 255)
    return out


def video_pts(path: Path) -> tuple[list[int], Fraction]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [f.pts for f in c.decode(s)], s.time_base


def lab(rgb: np.ndarray) -> np.ndarray:
    return color.rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()


def tiny_engine() -> Colorizer:
    torch.manual_seed(0)
    model = UNet(UNetConfig(widths=(8, 16, 32, 64)))
    torch.nn.init.normal_(model.head.weight, std=0.5)
    return Colorizer(model.eval(), 64, torch.device("cpu"))


def constant_ab(a: float, b: float):
    def predict(l: np.ndarray) -> np.ndarray:
        n, _, h, w = l.shape
        return np.broadcast_to(np.float32([a, b]).reshape(1, 2, 1, 1), (n, 2, h, w)).copy()

    return predict


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def engine() -> Colorizer:
    return tiny_engine()


# --- timing -----------------------------------------------------------------------------------


def test_frames_pts_time_base_rate_and_duration_are_kept(tmp_path, engine):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    pts = make_clip(src, n=15, audio="aac")
    report = colorize_video(src, dst, engine.predict_frames, FAST)
    assert report.frames == 15 and report.corrupt_frames_bridged == 0
    out_pts, tb = video_pts(dst)
    assert tb == Fraction(1, 30000)
    assert out_pts == pts
    with av.open(str(src)) as a, av.open(str(dst)) as b:
        va, vb = a.streams.video[0], b.streams.video[0]
        assert vb.average_rate == NTSC  # the rational, not 29.97 or 30
        assert vb.frames == 15
        assert vb.duration == va.duration
        assert b.duration == a.duration


def test_variable_frame_rate_survives(tmp_path):
    src, dst = tmp_path / "vfr.mp4", tmp_path / "out.mp4"
    pts = [0, 33, 70, 100, 180, 190, 260, 400, 433, 466]
    make_clip(src, n=len(pts), rate=Fraction(25), time_base=Fraction(1, 1000), pts=pts)
    colorize_video(src, dst, constant_ab(10, 10), FAST)
    in_pts, in_tb = video_pts(src)
    out_pts, tb = video_pts(dst)
    assert [p * in_tb for p in in_pts] == [Fraction(p, 1000) for p in pts]
    # MP4 raised the time base to 1/16000 (its muxer wants at least 10000 ticks per second): same times.
    assert [p * tb for p in out_pts] == [Fraction(p, 1000) for p in pts]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_containers_and_odd_sizes(tmp_path, suffix):
    src, dst = tmp_path / "odd.mov", tmp_path / f"out{suffix}"
    make_clip(src, n=8, size=(65, 47), pix_fmt="yuv444p")
    report = colorize_video(src, dst, constant_ab(20, -10), FAST)
    frames = decode_rgb(dst)
    assert len(frames) == 8 and frames[0].shape == (47, 65, 3)
    in_pts, in_tb = video_pts(src)
    out_pts, tb = video_pts(dst)
    if suffix == ".mkv":  # Matroska stores milliseconds
        assert tb == Fraction(1, 1000) and out_pts == [round(p * in_tb * 1000) for p in in_pts]
    else:
        assert tb == in_tb and out_pts == in_pts
    assert any("yuv444p" in n for n in report.notes)


def test_rotation_is_kept(tmp_path):
    src, dst = tmp_path / "rot.mp4", tmp_path / "out.mov"
    make_clip(src, n=4, rotation=90)
    colorize_video(src, dst, constant_ab(0, 0), FAST)
    with av.open(str(dst)) as c:
        assert next(c.decode(video=0)).rotation == 90


# --- other streams ------------------------------------------------------------------------------


def _packets(path: Path, kind: str) -> list[tuple[bytes, int, int]]:
    with av.open(str(path)) as c:
        s = getattr(c.streams, kind)[0]
        return [(bytes(p), p.pts, p.dts) for p in c.demux(s) if p.size]


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_audio_packets_are_copied_bit_exact(tmp_path, suffix):
    src, dst = tmp_path / "in.mp4", tmp_path / f"out{suffix}"
    make_clip(src, n=12, audio="aac")
    report = colorize_video(src, dst, constant_ab(5, 5), FAST)
    assert report.copied_streams == ["audio 1 (aac)"] and report.reencoded_streams == []
    before, after = _packets(src, "audio"), _packets(dst, "audio")
    assert len(before) > 10 and after == before


def test_audio_in_matroska_keeps_bytes(tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mkv"
    make_clip(src, n=12, audio="aac")
    colorize_video(src, dst, constant_ab(5, 5), FAST)
    assert [p[0] for p in _packets(dst, "audio")] == [p[0] for p in _packets(src, "audio")]


def test_pcm_is_reencoded_for_mp4_and_copied_to_mov(tmp_path):
    src = tmp_path / "pcm.mov"
    make_clip(src, n=12, audio="pcm_s16le")
    report = colorize_video(src, tmp_path / "out.mp4", constant_ab(5, 5), FAST)
    assert report.copied_streams == [] and report.reencoded_streams[0].startswith("audio 1 (pcm_s16le -> aac)")
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
        assert sum(f.samples for f in c.decode(audio=0)) >= 48000 * 12 // 30 - 2048
    report = colorize_video(src, tmp_path / "out.mov", constant_ab(5, 5), FAST)
    assert report.copied_streams == ["audio 1 (pcm_s16le)"]
    assert _packets(tmp_path / "out.mov", "audio") == _packets(src, "audio")


def test_subtitles_are_converted_where_the_container_needs_it(tmp_path):
    from av.subtitles.subtitle import SubtitleSet

    src = tmp_path / "subs.mp4"
    with av.open(str(src), "w") as out:
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        t = out.add_stream("mov_text")
        t.codec_context.subtitle_header = b"[Script Info]\nScriptType: v4.00+\n\n[Events]\n"
        t.time_base = t.codec_context.time_base = Fraction(1, 1000)
        for i in range(12):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            f.pts = i
            for p in v.encode(f):
                out.mux(p)
        sub = t.codec_context.encode_subtitle(SubtitleSet.create(b"0,0,Default,,0,0,0,,hello", 0, 200, 0))
        sub.pts = sub.dts = 0
        sub.duration, sub.time_base, sub.stream = 200, Fraction(1, 1000), t
        out.mux(sub)
        for p in v.encode(None):
            out.mux(p)
    report = colorize_video(src, tmp_path / "out.mkv", constant_ab(5, 5), FAST)
    assert report.reencoded_streams == ["subtitle 1 (mov_text -> ass): mkv cannot hold mov_text"]
    with av.open(str(tmp_path / "out.mkv")) as c:
        s = c.streams.subtitles[0]
        texts = [r.ass for p in c.demux(s) if p.size for sub in [s.codec_context.decode2(p)] if sub for r in sub]
        assert s.codec_context.name in ("ass", "ssa") and any(b"hello" in t for t in texts)
    report = colorize_video(src, tmp_path / "out.mp4", constant_ab(5, 5), FAST)
    assert report.copied_streams == ["subtitle 1 (mov_text)"]


# --- colour --------------------------------------------------------------------------------------


def test_lightness_is_kept_and_colour_is_tagged(tmp_path, engine):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src, n=6)
    colorize_video(src, dst, engine.predict_frames, FAST)
    before, after = decode_rgb(src), decode_rgb(dst)
    dl = np.abs(lab(after[3])[..., 0] - lab(before[3])[..., 0])
    assert dl.mean() < 1.5
    chroma = np.hypot(*lab(after[3])[..., 1:].transpose(2, 0, 1))
    assert chroma.mean() > 3  # the engine did colour it
    with av.open(str(dst)) as c:
        cc = c.streams.video[0].codec_context
        assert (int(cc.colorspace), int(cc.color_range), int(cc.color_primaries), int(cc.color_trc)) == (1, 1, 1, 1)


def test_colour_input_is_treated_as_gray(tmp_path, engine):
    base = _texture(np.random.default_rng(3), 48, 64)
    colour = [(np.roll(base, i, axis=0) * 255).round().astype(np.uint8) for i in range(6)]
    gray = []
    for rgb in colour:
        l = color.rgb_to_lightness(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
        g = color.lightness_to_rgb_gray(l).clamp(0, 1).permute(1, 2, 0).numpy()
        gray.append((g * 255).round().astype(np.uint8))
    # Lossless RGB input, so that both clips reach the pipeline with the same lightness.
    make_clip(tmp_path / "colour.mkv", colour, codec="ffv1", pix_fmt="bgr0")
    make_clip(tmp_path / "gray.mkv", gray, codec="ffv1", pix_fmt="bgr0")
    colorize_video(tmp_path / "colour.mkv", tmp_path / "a.mp4", engine.predict_frames, FAST)
    colorize_video(tmp_path / "gray.mkv", tmp_path / "b.mp4", engine.predict_frames, FAST)
    a, b = decode_rgb(tmp_path / "a.mp4"), decode_rgb(tmp_path / "b.mp4")
    assert np.abs(np.stack(a) - np.stack(b)).mean() < 1.5 / 255
    # ... and the colour input's own colours are gone.
    assert np.abs(np.stack(a) - np.stack(colour) / 255).mean() > 10 / 255


@pytest.mark.parametrize("layout", ["planar", "channels-last"])
def test_compose_rgb_is_lab_to_rgb_keep_lightness_in_8_bits(rng, layout):
    l = torch.from_numpy(rng.random((1, 40, 50), dtype=np.float32) * 100)
    ab_hwc = rng.normal(0, 60, (40, 50, 2)).astype(np.float32)  # many out of gamut
    # Both layouts reach the compose stage: planar without smoothing, a view of OpenCV's (H, W, 2) with it.
    ab = torch.from_numpy(ab_hwc).permute(2, 0, 1)
    if layout == "planar":
        ab = ab.contiguous()
    expected = (color.lab_to_rgb_keep_lightness(l, ab) * 255).round().permute(1, 2, 0).numpy()
    got = compose_rgb(l.numpy(), ab.numpy())
    assert got.dtype == np.uint8 and got.shape == (40, 50, 3) and got.flags.c_contiguous
    diff = np.abs(got.astype(np.float64) - expected)
    # The same gamut mapping; the 8-bit encoding differs only where a value is within float rounding of a level boundary.
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3


def test_compose_yuv420_is_the_rgb_path_at_chroma_resolution(rng):
    """A black-and-white source's frames are composed straight into 4:2:0 (``compose_yuv420``): gray
    keeps its luma exactly, and colour differs from composing RGB at full size and converting by about
    what 4:2:0 itself loses."""
    h, w = 48, 64
    detail = np.repeat(rng.random((h, w, 1)), 3, axis=2)  # pixel-level detail on smooth shapes
    gray_rgb = ((0.7 * _texture(rng, h, w, colour=False) + 0.3 * detail) * 255).round().astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(gray_rgb, format="rgb24").reformat(format="yuv420p")
    l, gray_luma = _FrameLightness(w, h)(frame)
    truth = _texture(rng, h, w)  # a smooth colour field like an engine's
    ab = color.rgb_to_lab(torch.from_numpy(truth).permute(2, 0, 1).float())[1:].numpy()  # |ab| ~50, some out of gamut
    ideal = compose_rgb(l, ab)  # full-size RGB, before any subsampling
    via_rgb = encoder_frame_to_rgb(rgb_to_encoder_frame(ideal, "yuv420p"))
    half = (w // 2, h // 2)
    l_half = cv2.resize(l[0], half, interpolation=cv2.INTER_AREA)[None]
    ab_half = cv2.resize(ab.transpose(1, 2, 0), half, interpolation=cv2.INTER_AREA)
    out = compose_yuv420(l_half, ab_half.transpose(2, 0, 1), gray_luma)
    assert out.format.name == "yuv420p" and (out.width, out.height) == (w, h)
    assert (int(out.colorspace), int(out.color_range), int(out.color_trc), int(out.color_primaries)) == (1, 1, 1, 1)
    direct = encoder_frame_to_rgb(out)
    loss_rgb = np.abs(via_rgb.astype(int) - ideal).mean()
    loss_direct = np.abs(direct.astype(int) - ideal).mean()
    # Colour that changes within a few pixels loses several levels to 4:2:0 either way (about 6 here,
    # 1.2 on a real frame with an engine's smooth chroma); composing at chroma resolution loses no more.
    assert loss_direct < 1.05 * loss_rgb, (loss_direct, loss_rgb)
    assert np.abs(direct.astype(int) - via_rgb).mean() < 0.5 * loss_rgb
    # Zero chroma: the luma plane is the gray's (a block whose composed gray rounds the other way at a
    # level boundary may be one level off) and the chroma neutral.
    neutral = compose_yuv420(l_half, np.zeros_like(ab_half).transpose(2, 0, 1), gray_luma)
    planes = [_plane_u8(p) for p in neutral.planes]
    off = np.abs(planes[0].astype(int) - gray_luma)
    assert off.max() <= 1 and off.mean() < 0.01
    assert np.abs(planes[1].astype(int) - 128).max() <= 1 and np.abs(planes[2].astype(int) - 128).max() <= 1


def test_4_2_0_films_colour_at_chroma_resolution_with_full_size_luma(tmp_path):
    """The engine sees L at half size in 4:2:0 films; the output's luma keeps the input's full-size
    detail, exactly where the engine gives gray, for black-and-white and colour sources alike."""
    sizes = []

    def gray_engine(l: np.ndarray) -> np.ndarray:
        sizes.append(tuple(l.shape[-2:]))
        return np.zeros((l.shape[0], 2, *l.shape[-2:]), np.float32)

    rng = np.random.default_rng(4)
    detail = np.repeat(rng.random((48, 64, 1)), 3, axis=2)
    base = 0.6 * _texture(rng, 48, 64, colour=False) + 0.4 * detail
    frames = [(np.roll(base, i, axis=1) * 255).round().astype(np.uint8) for i in range(5)]
    make_clip(tmp_path / "bw.mkv", frames, codec="ffv1", pix_fmt="yuv420p")  # lossless, so Y is known
    colorize_video(tmp_path / "bw.mkv", tmp_path / "bw-out.mkv", gray_engine, VideoOptions(codec="ffv1"))
    assert set(sizes) == {(24, 32)}
    with av.open(str(tmp_path / "bw.mkv")) as a, av.open(str(tmp_path / "bw-out.mkv")) as b:
        for fa, fb in zip(a.decode(video=0), b.decode(video=0), strict=True):
            assert fb.format.name == "yuv420p"
            ya, yb = _plane_u8(fa.planes[0]).astype(int), _plane_u8(fb.planes[0]).astype(int)
            # Limited range in, limited range out, gray out: the luma is the input's.
            assert np.abs(ya - yb).max() <= 1


def test_gray_lightness_shortcut_matches_the_formula(rng):
    gray = np.repeat(rng.integers(0, 256, (30, 40, 1), dtype=np.uint8), 3, axis=2)
    expected = color.rgb_to_lightness(torch.from_numpy(gray).permute(2, 0, 1).float() / 255).numpy()
    np.testing.assert_allclose(lightness_of_rgb_u8(gray), expected, rtol=0, atol=1e-4)


# --- temporal smoothing ------------------------------------------------------------------------


def _flicker(seed: int = 0, amplitude: float = 15.0):
    """A predict_ab that colours every frame uniformly, with a random per-frame offset (flicker)."""
    gen = np.random.default_rng(seed)

    def predict(l: np.ndarray) -> np.ndarray:
        n, _, h, w = l.shape
        ab = np.float32([20.0, 10.0]).reshape(1, 2, 1, 1) + amplitude * gen.standard_normal((n, 2, 1, 1), np.float32)
        return np.broadcast_to(ab, (n, 2, h, w)).copy()

    return predict


def _mean_ab(path: Path) -> np.ndarray:
    return np.stack([lab(f)[8:-8, 8:-8, 1:].mean(axis=(0, 1)) for f in decode_rgb(path)])


def test_smoothing_reduces_flicker_on_a_panning_clip(tmp_path):
    src = tmp_path / "pan.mp4"
    make_clip(src, n=24, size=(96, 64), seed=5)  # pans one pixel per frame
    colorize_video(src, tmp_path / "off.mp4", _flicker(), VideoOptions(crf=1, smoothing="off"))
    colorize_video(src, tmp_path / "on.mp4", _flicker(), VideoOptions(crf=1, smoothing="flow"))
    jump_off = np.abs(np.diff(_mean_ab(tmp_path / "off.mp4"), axis=0)).mean()
    jump_on = np.abs(np.diff(_mean_ab(tmp_path / "on.mp4"), axis=0)).mean()
    assert jump_on < 0.5 * jump_off


def test_smoothing_restarts_at_a_scene_cut(tmp_path):
    rng = np.random.default_rng(7)
    base = _texture(rng, 48, 64, colour=False) * 0.4
    dark = (base * 255).round().astype(np.uint8)
    bright = ((base + 0.5) * 255).round().astype(np.uint8)  # same picture, much brighter: a new shot
    src = tmp_path / "cut.mp4"
    make_clip(src, [dark] * 6 + [bright] * 6)

    def by_brightness(l: np.ndarray) -> np.ndarray:
        a = np.where(l.mean(axis=(1, 2, 3)) < 50, 40.0, -40.0).astype(np.float32)  # dark shot red, bright shot green
        return np.broadcast_to(np.stack([a, np.zeros_like(a)], 1)[..., None, None], (len(a), 2, *l.shape[-2:])).copy()

    strong = VideoOptions(crf=1, strength=0.9)
    report = colorize_video(src, tmp_path / "on.mp4", by_brightness, strong)
    a_first_after_cut = _mean_ab(tmp_path / "on.mp4")[6, 0]
    assert report.scene_cuts == 1 and a_first_after_cut < -30
    # Control: without cut detection the old shot's colour does bleed into the new one.
    never = VideoOptions(crf=1, strength=0.9, scene_cut_threshold=1.0)
    colorize_video(src, tmp_path / "never.mp4", by_brightness, never)
    assert _mean_ab(tmp_path / "never.mp4")[6, 0] > 0


def test_smoother_state_and_identity():
    rng = np.random.default_rng(0)
    l = (_texture(rng, 40, 60, colour=False)[..., 0] * 100).astype(np.float32)
    ab1, ab2 = np.full((40, 60, 2), 30, np.float32), np.full((40, 60, 2), -30, np.float32)
    s = temporal.ChromaSmoother(strength=0.5)
    assert np.array_equal(s.step(l, ab1), ab1)  # first frame: as predicted
    out = s.step(l, ab2)  # static: half way (borders included, flow is zero)
    assert np.allclose(out[5:-5, 5:-5], 0, atol=1.5)
    off = temporal.ChromaSmoother(strength=0.0)
    off.step(l, ab1)
    assert np.array_equal(off.step(l, ab2), ab2)


def test_a_skipped_frame_takes_the_previous_prediction_along_the_motion():
    rng = np.random.default_rng(3)
    big = (_texture(rng, 80, 140, colour=False)[..., 0] * 100).astype(np.float32)
    frame = [np.ascontiguousarray(big[10:70, 20 + 3 * t : 120 + 3 * t]) for t in range(2)]  # pans 3 px
    # A prediction tied to the picture: ab follows L, so the right one for frame 1 is known.
    ab = [np.stack([l - 50, 50 - l], axis=-1).astype(np.float32) for l in frame]
    calls = []

    def engine() -> np.ndarray:
        calls.append(1)
        return ab[1]

    s = temporal.ChromaSmoother(strength=0.0)  # no blending: the output is the prediction used
    s.step(frame[0], ab[0])
    carried = s.step(frame[1], engine)
    inner = (slice(8, -8), slice(8, -8))
    assert calls == []  # the motion was followed: the engine was not asked
    assert np.abs(carried - ab[1])[inner].mean() < 0.15 * np.abs(ab[0] - ab[1])[inner].mean()
    # The first frame, and a frame across a scene cut, have no motion to follow: the engine is asked.
    first = temporal.ChromaSmoother(strength=0.6)
    assert np.array_equal(first.step(frame[0], engine), ab[1]) and calls == [1]
    cut = temporal.ChromaSmoother(strength=0.6)
    cut.step(frame[0], ab[0])
    assert np.array_equal(cut.step(np.clip(frame[1] + 45, 0, 100), engine), ab[1])
    assert calls == [1, 1] and cut.cuts == 1
    # Motion that cannot be followed (a new picture with the same tones, not a cut): asked when fewer
    # than min_followed of the pixels pass the motion checks, carried otherwise.
    other = (_texture(np.random.default_rng(4), 60, 100, colour=False)[..., 0] * 100).astype(np.float32)
    for min_followed, asked in [(0.0, False), (0.9, True)]:
        s = temporal.ChromaSmoother(strength=0.6, min_followed=min_followed)
        s.step(frame[0], ab[0])
        before = len(calls)
        s.step(other, engine)
        assert s.cuts == 0 and (len(calls) > before) == asked


def test_the_smoothers_downscale_is_the_area_filter_within_a_bound(rng):
    # Under a factor of 2 (a film's 427x240 chroma to the flow's 320x180) bilinear stands in for the area
    # filter. On the harshest chroma an engine gives (independent noise at its 96 px, upsampled; mean |ab|
    # 16) they differ by 0.47 on average (at most 6), on the lightness DIS sees by less; from a factor
    # of 2 on it is the area filter itself.
    ab = cv2.resize(rng.normal(0, 30, (54, 96, 2)).astype(np.float32), (427, 240), interpolation=cv2.INTER_LINEAR)
    area = cv2.resize(ab, (320, 180), interpolation=cv2.INTER_AREA)
    got = temporal._shrink_to(ab, (180, 320))
    assert got.shape == area.shape and np.abs(got - area).mean() < 0.6 and np.abs(got - area).max() < 8
    l = (_texture(rng, 240, 427, colour=False)[..., 0] * 100).astype(np.float32)
    l_area = cv2.resize(l, (320, 180), interpolation=cv2.INTER_AREA)
    assert np.abs(temporal.resize_long_side(l, 320) - l_area).mean() < 1.0
    for size in [(120, 213), (80, 142)]:  # factors of 2 and 3: the area filter, exactly
        want = cv2.resize(ab, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        assert np.array_equal(temporal._shrink_to(ab, size), want)
    assert temporal._shrink_to(ab, (240, 427)) is ab


def test_the_smoothers_median_is_numpys(rng):
    for shape in [(180, 320), (181, 321), (1, 1)]:
        x = rng.normal(size=shape).astype(np.float32)
        for view in (x, x[::2, ::2]):
            before = view.copy()
            assert temporal._median(view) == float(np.median(view))
            assert np.array_equal(view, before)


def _counting(predict):
    seen = []

    def counted(l: np.ndarray) -> np.ndarray:
        seen.append(l.shape[0])
        return predict(l)

    return counted, seen


def test_the_engine_sees_every_nth_frame_and_each_frame_after_a_cut(tmp_path):
    rng = np.random.default_rng(7)
    base = _texture(rng, 48, 64, colour=False) * 0.4
    dark = (base * 255).round().astype(np.uint8)
    bright = ((base + 0.5) * 255).round().astype(np.uint8)
    src = tmp_path / "cut.mp4"
    make_clip(src, [dark] * 5 + [bright] * 7)  # the cut falls on frame 5, which the engine would skip

    def by_brightness(l: np.ndarray) -> np.ndarray:
        a = np.where(l.mean(axis=(1, 2, 3)) < 50, 40.0, -40.0).astype(np.float32)
        return np.broadcast_to(np.stack([a, np.zeros_like(a)], 1)[..., None, None], (len(a), 2, *l.shape[-2:])).copy()

    predict, seen = _counting(by_brightness)
    report = colorize_video(src, tmp_path / "on.mp4", predict, VideoOptions(crf=1, engine_interval=2))
    assert report.frames == 12 and report.scene_cuts == 1
    assert sum(seen) == 6 + 1  # frames 0, 2, ..., 10, and frame 5 at the cut
    a = _mean_ab(tmp_path / "on.mp4")[:, 0]
    assert (a[:5] > 30).all() and (a[5:] < -30).all()
    # Without smoothing there is no motion to carry colour along: every frame is coloured.
    predict, seen = _counting(by_brightness)
    colorize_video(src, tmp_path / "off.mp4", predict, VideoOptions(crf=1, smoothing="off", engine_interval=2))
    assert sum(seen) == 12


# --- warping error -----------------------------------------------------------------------------


def test_warping_error_of_identical_static_frames_is_zero():
    rng = np.random.default_rng(1)
    frame = _texture(rng, 48, 64)
    assert temporal.warping_error([frame] * 4, [frame] * 4) == 0.0


def test_warping_error_with_exact_flow_of_a_shift_is_zero():
    rng = np.random.default_rng(2)
    a = _texture(rng, 48, 64)
    b = np.roll(a, (2, -3), axis=(0, 1))  # b(x) = a(x - (dy, dx)), so a(x) = b(x + (dy, dx))
    flow = np.zeros((48, 64, 2), np.float32)
    flow[..., 0], flow[..., 1] = -3, 2
    mask = np.zeros((48, 64), bool)
    mask[:46, 3:] = True  # where x + flow stays inside the frame
    assert temporal.pair_warping_error(a, b, flow, mask) < 1e-10
    # A wrong flow gives a clearly larger error, so the check has teeth.
    assert temporal.pair_warping_error(a, b, np.zeros_like(flow), mask) > 1e-3


def test_warping_error_sees_flicker():
    base = _texture(np.random.default_rng(4), 48, 64)
    frames = [np.roll(base, i, axis=1) for i in range(4)]
    steady = temporal.warping_error(frames, frames)
    flicker = [np.clip(f * (1.0 + 0.2 * (i % 2)), 0, 1) for i, f in enumerate(frames)]
    assert temporal.warping_error(flicker, frames) > 5 * steady + 1e-3


def test_consistency_mask_flags_out_of_frame_motion():
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0] = 5  # everything moves 5 px right: the rightmost 5 columns leave the frame
    mask = temporal.consistency_mask(flow, -flow)
    assert mask[:, :25].all() and not mask[:, 26:].any()


# --- errors and robustness ---------------------------------------------------------------------


def test_broken_inputs_raise_one_line_errors(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a film\n" * 10)
    with av.open(str(tmp_path / "audio.m4a"), "w") as out:
        a = out.add_stream("aac", rate=48000)
        for k in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 48000, k * 1024
            for p in a.encode(f):
                out.mux(p)
    make_clip(tmp_path / "ok.mp4", n=4)
    full = (tmp_path / "ok.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(full[: len(full) // 2])  # moov at the end: unreadable
    cases = {
        "missing.mp4": "file not found",
        "empty.mp4": "empty file",
        "text.mp4": "not a video",
        "audio.m4a": "no video stream",
        "cut.mp4": "not a video, or truncated",
    }
    for name, message in cases.items():
        with pytest.raises(VideoError, match=message) as err:
            colorize_video(tmp_path / name, tmp_path / "out.mp4", constant_ab(0, 0), FAST)
        assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
    with pytest.raises(VideoError, match="unsupported output format: .avi"):
        colorize_video(tmp_path / "ok.mp4", tmp_path / "out.avi", constant_ab(0, 0), FAST)
    assert not (tmp_path / "out.mp4").exists() and no_temp_files(tmp_path)


def test_corrupt_packets_are_bridged(tmp_path):
    src = tmp_path / "in.mp4"
    pts = make_clip(src, n=20)
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    rng = np.random.default_rng(0)
    for pos, size in packets[8:10]:  # two packets in the middle
        data[pos + 4 : pos + size] = rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    report = colorize_video(bad, tmp_path / "out.mp4", constant_ab(10, 0), FAST)
    assert report.frames == 20 and report.corrupt_frames_bridged >= 1
    assert video_pts(tmp_path / "out.mp4")[0] == pts


def test_truncated_stream_keeps_the_decodable_part(tmp_path):
    src = tmp_path / "in.mkv"
    make_clip(src, n=30)
    data = src.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    report = colorize_video(cut, tmp_path / "out.mp4", constant_ab(10, 0), FAST)
    assert 5 < report.frames < 30
    assert report.frames == len(video_pts(tmp_path / "out.mp4")[0])
    assert any("truncated" in note for note in report.notes)


def _run_with_timeout(fn, seconds: float = 60.0):
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "colorize_video hung"
    return result


def _workers_alive() -> list[str]:
    time.sleep(0.05)
    return [t.name for t in threading.enumerate() if t.name.startswith("colorize-video-")]


def test_failure_midway_leaves_no_temp_file_and_dst_untouched(tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src, n=24)
    dst.write_bytes(b"previous film")
    calls = []

    def failing(l: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("engine exploded")
        return constant_ab(0, 0)(l)

    every_frame = VideoOptions(crf=1, batch_size=4, engine_interval=1)  # six engine calls, the third fails
    result = _run_with_timeout(lambda: colorize_video(src, dst, failing, every_frame))
    assert isinstance(result.get("error"), RuntimeError) and "engine exploded" in str(result["error"])
    assert dst.read_bytes() == b"previous film" and no_temp_files(tmp_path)
    assert _workers_alive() == []


@pytest.mark.parametrize("exc", [RuntimeError("progress broke"), KeyboardInterrupt()])
def test_errors_in_the_calling_thread_stop_the_workers(tmp_path, exc):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src, n=24)

    def progress(done: int, total: int | None) -> None:
        assert total == 24
        if done == 5:
            raise exc

    result = _run_with_timeout(lambda: colorize_video(src, dst, constant_ab(0, 0), FAST, progress=progress))
    assert type(result.get("error")) is type(exc)
    assert not dst.exists() and no_temp_files(tmp_path)
    assert _workers_alive() == []


def test_progress_reports_every_frame(tmp_path):
    src = tmp_path / "in.mp4"
    make_clip(src, n=10)
    seen = []
    colorize_video(src, tmp_path / "out.mkv", constant_ab(0, 0), FAST, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 10) for i in range(1, 11)]


def test_engine_batches_grow_from_one_frame_in_each_segment(tmp_path):
    """Each segment's first frame goes to the engine alone (the encoder starts after one engine call,
    not a batch's), then batches double up to ``batch_size``; a segment's end closes its batch."""
    src = tmp_path / "in.mp4"
    make_clip(src, n=20)
    sizes = []

    def recording(l: np.ndarray) -> np.ndarray:
        sizes.append(l.shape[0])
        return constant_ab(0, 0)(l)

    colorize_video(src, tmp_path / "one.mp4", recording, VideoOptions(crf=1, batch_size=4, engine_interval=1))
    assert sizes == [1, 2, 4, 4, 4, 4, 1]
    sizes.clear()
    segmented = VideoOptions(crf=1, batch_size=4, engine_interval=1, segment_seconds=0.25)  # 8 frames a segment
    colorize_video(src, tmp_path / "many.mp4", recording, segmented)
    assert sizes == [1, 2, 4, 1] * 2 + [1, 2, 1]


def test_is_video(tmp_path):
    from engines.media.photo_io import write_photo

    make_clip(tmp_path / "film.mp4", n=3)
    make_clip(tmp_path / "film.bin", n=3, fmt="matroska")  # no telling suffix: probed
    write_photo(tmp_path / "photo.png", np.zeros((8, 8, 3), np.float32))
    write_photo(tmp_path / "photo.jpg", np.zeros((8, 8, 3), np.float32))
    (tmp_path / "notes.txt").write_text("hello")
    assert is_video(tmp_path / "film.mp4") and is_video(tmp_path / "film.bin")
    for name in ("photo.png", "photo.jpg", "notes.txt", "missing.mp4"):
        assert not is_video(tmp_path / name), name
    (tmp_path / "disguised.mp4").write_bytes((tmp_path / "photo.png").read_bytes())
    assert not is_video(tmp_path / "disguised.mp4")


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        VideoOptions(smoothing="magic")
    with pytest.raises(ValueError):
        VideoOptions(strength=1.5)


# --- interruption and --resume ------------------------------------------------------------------

SEGMENTED = VideoOptions(crf=1, batch_size=4, segment_seconds=0.25)  # 8 frames a segment at 29.97 fps


def _partial(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}.colorize-partial")


def _stream_packets(path: Path) -> dict[str, list[tuple[bytes, int, int, int]]]:
    with av.open(str(path)) as c:
        packets = {"video": [], "audio": []}
        for p in c.demux():
            if p.size:
                packets[p.stream.type].append((bytes(p), p.pts, p.dts, p.duration))
        return packets


def _timing(path: Path) -> tuple:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return v.frames, v.time_base, v.average_rate, v.duration, c.duration, [s.type for s in c.streams]


def test_segments_change_no_pixel_and_cost_little_encoding_error(tmp_path, engine):
    """Segmenting restarts the encoder (a keyframe each segment) and nothing else: losslessly encoded,
    one segment and many give the same pixels; at the default quality the error against that lossless
    film grows by little."""
    src = tmp_path / "in.mp4"
    make_clip(src, n=40)
    runs = {}
    for name, crf, seconds in [("one0", 0, 100.0), ("many0", 0, 0.25), ("one", 18, 100.0), ("many", 18, 0.25)]:
        dst = tmp_path / f"{name}.mp4"
        colorize_video(src, dst, engine.predict_frames, VideoOptions(crf=crf, batch_size=4, segment_seconds=seconds))
        runs[name] = np.stack(decode_rgb(dst))
    np.testing.assert_array_equal(runs["one0"], runs["many0"])
    error = {k: np.abs(runs[k] - runs["one0"]).mean() * 255 for k in ("one", "many")}
    assert error["many"] < 1.25 * error["one"] + 0.1, error


@pytest.mark.parametrize("interval", [1, 3])  # 3: a segment (8 frames) ends between two engine frames
def test_an_interrupted_film_resumes_to_the_uninterrupted_film(tmp_path, engine, interval):
    SEGMENTED = VideoOptions(crf=1, batch_size=4, segment_seconds=0.25, engine_interval=interval)
    src = tmp_path / "in.mp4"
    make_clip(src, n=40, audio="aac")
    ref, dst = tmp_path / "ref.mp4", tmp_path / "out.mp4"
    colorize_video(src, ref, engine.predict_frames, SEGMENTED)

    def stop_at_20(done: int, total: int | None) -> None:
        if done == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        colorize_video(src, dst, engine.predict_frames, SEGMENTED, progress=stop_at_20, engine_key={"e": 1})
    assert not dst.exists() and (_partial(dst) / "manifest.json").is_file()
    # Without --resume, or with other settings or another input: refused, the work kept.
    kept = sorted(p.name for p in _partial(dst).iterdir())
    assert kept == ["manifest.json", "segment-000000.bin", "segment-000001.bin", "state-000001.npz"]
    for options, key, message in [
        (SEGMENTED, {"e": 1}, "add --resume"),
        (VideoOptions(crf=2, batch_size=4, segment_seconds=0.25), {"e": 1}, "other settings"),
        (SEGMENTED, {"e": 2}, "other settings"),
    ]:
        with pytest.raises(VideoError, match=message):
            colorize_video(src, dst, engine.predict_frames, options, resume=message != "add --resume", engine_key=key)
    assert sorted(p.name for p in _partial(dst).iterdir()) == kept and not dst.exists()
    seen = []
    report = colorize_video(
        src, dst, engine.predict_frames, SEGMENTED, lambda d, t: seen.append(d), resume=True, engine_key={"e": 1}
    )
    assert report.resumed_frames == 16 and report.frames == 40
    assert seen == list(range(16, 41))  # progress starts at the frames already done
    assert not _partial(dst).exists()
    assert _stream_packets(dst) == _stream_packets(ref)  # every packet, video and audio, and its timing
    assert _timing(dst) == _timing(ref) == _timing(src)


def test_a_failure_while_a_segment_drains_reaches_the_caller(tmp_path, monkeypatch):
    """Finished segments are drained and committed in a background thread: an error there (here the
    second commit fails as a full disk would) still stops the film with that error, nothing is left
    running, and the output never appears; the first segment stays committed."""
    from engines.video import segments

    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    make_clip(src, n=40)
    real_commit, commits = segments._Partial.commit, []

    def commit(self, *args):
        commits.append(threading.current_thread().name)
        if len(commits) == 2:
            raise OSError(28, "No space left on device")
        real_commit(self, *args)

    monkeypatch.setattr(segments._Partial, "commit", commit)
    result = _run_with_timeout(lambda: colorize_video(src, dst, constant_ab(0, 0), SEGMENTED))
    assert isinstance(result.get("error"), OSError) and "No space" in str(result["error"])
    assert commits[:2] == ["colorize-video-segment"] * 2  # drained off the writer's thread
    assert not dst.exists() and _workers_alive() == []
    manifest = json.loads((_partial(dst) / "manifest.json").read_text())
    assert [seg["file"] for seg in manifest["segments"]] == ["segment-000000.bin"]


def test_a_changed_input_is_not_resumed(tmp_path):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mkv"
    make_clip(src, n=30)

    def stop(done: int, total: int | None) -> None:
        if done == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        colorize_video(src, dst, constant_ab(5, 5), SEGMENTED, progress=stop)
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    with pytest.raises(VideoError, match="another version of the input"):
        colorize_video(src, dst, constant_ab(5, 5), SEGMENTED, resume=True)
    shutil.rmtree(_partial(dst))  # what the message says to do
    assert colorize_video(src, dst, constant_ab(5, 5), SEGMENTED, resume=True).resumed_frames == 0


def test_sigkill_mid_film_then_resume(tmp_path):
    """The real thing: the CLI killed with SIGKILL after a few segments, then run again with --resume."""
    src = tmp_path / "in.mp4"
    make_clip(src, n=150, audio="aac")  # 5 s, 19 segments
    ref, dst = tmp_path / "ref.mp4", tmp_path / "out.mp4"
    cli = [sys.executable, "-m", "colorcli", str(src), "--backend", "cpu", "--segment-seconds", "0.25", "--json"]
    root = Path(__file__).resolve().parents[1]
    subprocess.run([*cli, "-o", str(ref)], cwd=root, check=True, capture_output=True)
    run = subprocess.Popen([*cli, "-o", str(dst)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = _partial(dst) / "manifest.json"
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if len(json.loads(manifest.read_text())["segments"]) >= 3:
                break
        time.sleep(0.005)
    run.kill()
    run.communicate()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not dst.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [_partial(dst).name]
    done = json.loads(manifest.read_text())["segments"]
    r = subprocess.run([*cli, "-o", str(dst)], check=False, cwd=root, capture_output=True, text=True)
    assert r.returncode == 1 and "--resume" in json.loads(r.stdout)["error"] and not dst.exists()
    r = subprocess.run([*cli, "-o", str(dst), "--resume"], check=False, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    resumed = sum(seg["frames"] for seg in done)
    assert record["notes"] == [f"resumed: {resumed} of 150 frames were done by an earlier run"] and resumed >= 24
    assert not _partial(dst).exists()
    assert _stream_packets(dst) == _stream_packets(ref)
    assert _timing(dst) == _timing(ref) == _timing(src)


def _yuv_frame(fmt: str, w: int, h: int, luma: np.ndarray, chroma: int = 128) -> av.VideoFrame:
    frame = av.VideoFrame(w, h, fmt)
    for index, plane in enumerate(frame.planes):
        view = np.frombuffer(plane, np.uint8, plane.height * plane.line_size).reshape(plane.height, -1)
        view[:, : plane.width] = luma if index == 0 else chroma
    return frame


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "yuv444p"])
def test_gray_frames_take_lightness_from_the_y_plane_exactly(rng, fmt):
    w, h = 33, 21  # odd: chroma planes round up, rows are padded
    luma = rng.integers(0, 256, (h, w), dtype=np.uint8)
    frame = _yuv_frame(fmt, w, h, luma)
    reader = _FrameLightness(w, h)
    rgb = _frame_to_rgb(frame, w, h)
    assert (rgb == rgb[..., :1]).all()  # a gray frame
    via_rgb = color.rgb_u8_to_lightness(torch.from_numpy(rgb).permute(2, 0, 1)).numpy()  # the R = G = B table
    l, gray_luma = reader(frame)
    assert np.array_equal(l, via_rgb)
    # The luma the output's gray gets, by table: what the RGB path's conversion writes for that gray.
    assert np.array_equal(gray_luma, _plane_u8(rgb_to_encoder_frame(rgb, "yuv444p").planes[0]))
    # One chroma sample off neutral: not gray, so the RGB path, which still agrees to float rounding.
    tinted = _yuv_frame(fmt, w, h, luma)
    np.frombuffer(tinted.planes[1], np.uint8)[0] = 129
    l_t, gray_luma_t = reader(tinted)
    assert gray_luma_t is None
    rgb_t = _frame_to_rgb(tinted, w, h)
    np.testing.assert_allclose(
        l_t, color.rgb_u8_to_lightness(torch.from_numpy(rgb_t).permute(2, 0, 1)).numpy(), atol=1e-4
    )
