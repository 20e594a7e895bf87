"""Film colourisation: throughput against a plain re-encode, temporal stability and colour accuracy.

    python -m benchmarks.video [--clip ../shared/data/video-dev/davis-blackswan.mp4] [--dev ../shared/data/video-dev]
    python -m benchmarks.video --calibrate-cuts    # the scene-cut statistic on the dev clips

Speed (one process, the same clip, best of ``--repeat`` runs each):
  floor      decode -> RGB -> re-encode with the pipeline's own encoder settings (no colour work)
  off / on   ``engines.video.film.colorize_video`` with the shipped regression engine, smoothing off / on
Frames per second are wall-clock; CPU ms per frame (user + system of the whole process) is given too,
because on a shared machine the wall-clock ratio also measures how much of the CPU the run was given.

Temporal stability: the warping error of Lai et al. 2018 (``engines.video.temporal.warping_error``; flow and
occlusion mask from the original colour frames, output frame t+1 warped back onto t, squared RGB
distance in [0, 1] summed over channels, mean over non-occluded pixels and frame pairs), for the
original footage, the output with smoothing off and with smoothing on, over the davis clips (used as
black-and-white input: the pipeline discards their colour). Colour accuracy: mean CIELAB ab distance
of the output to the original, per pixel, averaged over frames; smoothing should not raise it.

Memory: peak RSS of a child process colourising the clip and the same clip looped four times; a
streaming pipeline shows (nearly) the same peak for both.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from benchmarks import ROOT
from engines import color
from engines.evaluation.scoring import video_frames
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend
from engines.video import temporal
from engines.video.film import (
    VideoOptions,
    add_video_encoder,
    colorize_video,
    decode_colorspace,
    rgb_to_encoder_frame,
)

DEV = ROOT.parent / "shared" / "data" / "video-dev"


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def floor_transcode(src: Path, dst: Path, options: VideoOptions) -> int:
    """Decode to RGB and re-encode, with the pipeline's conversions and encoder settings; returns frames."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        w, h = vin.codec_context.width, vin.codec_context.height
        vout = add_video_encoder(out, options.codec, options.crf, w, h, vin.time_base, vin.average_rate)
        n = 0
        for frame in inp.decode(vin):
            matrix, rng = decode_colorspace(frame)
            rgb = frame.to_ndarray(format="rgb24", src_colorspace=matrix, src_color_range=rng, threads=1)
            f = rgb_to_encoder_frame(rgb, vout.pix_fmt)
            f.pts, f.time_base, f.duration = frame.pts, vin.time_base, frame.duration
            for p in vout.encode(f):
                out.mux(p)
            n += 1
        for p in vout.encode(None):
            out.mux(p)
    return n


def measure_speed(clip: Path, predict_ab, repeat: int, tmp: Path) -> dict[str, tuple[float, float]]:
    """name -> (frames/s wall-clock, CPU ms/frame), best of ``repeat`` interleaved runs."""
    runs = {
        "floor": lambda: floor_transcode(clip, tmp / "floor.mp4", VideoOptions()),
        "off": lambda: colorize_video(clip, tmp / "off.mp4", predict_ab, VideoOptions(smoothing="off")).frames,
        "on": lambda: colorize_video(clip, tmp / "on.mp4", predict_ab, VideoOptions(smoothing="flow")).frames,
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), _cpu_seconds()
            frames = run()
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            fps, cpu_ms = frames / wall, 1000 * cpu / frames
            if name not in best or fps > best[name][0]:
                best[name] = (fps, cpu_ms)
    return best


def rgb_frames(path: Path) -> Iterator[np.ndarray]:
    """Decoded frames as float32 RGB (H, W, 3) in [0, 1], read as ``colorize eval`` reads them."""
    return (frame.astype(np.float32) / 255 for frame in video_frames(path))


def _ab(rgb: np.ndarray) -> torch.Tensor:
    return color.rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1))[1:]


def clip_quality(original: Path, outputs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """For one clip: the warping error of the original and of each output (``warp``), each output's
    mean ab error to the original (``ab``) and its chroma change along the motion (``ab_change``: RMS
    CIELAB ab distance between output frame t and output frame t+1 warped onto t, non-occluded pixels).

    The flow and occlusion mask of each frame pair are computed once, from the original frames."""
    names = ["original", *outputs]
    streams = [rgb_frames(original)] + [rgb_frames(p) for p in outputs.values()]
    warp_sum = dict.fromkeys(names, 0.0)
    change_sum = dict.fromkeys(outputs, 0.0)
    ab_sum = dict.fromkeys(outputs, 0.0)
    pairs = frames = 0
    prev: list[np.ndarray] | None = None
    prev_ab: list[np.ndarray] | None = None
    for current in zip(*streams, strict=True):
        ab_ref = _ab(current[0])
        abs_out = [_ab(out) for out in current[1:]]
        for name, ab in zip(outputs, abs_out):
            ab_sum[name] += float((ab - ab_ref).norm(dim=0).mean())
        abs_out = [ab.permute(1, 2, 0).contiguous().numpy() for ab in abs_out]
        frames += 1
        if prev is not None:
            flow, mask = temporal.reference_flow(prev[0], current[0])
            for name, a, b in zip(names, prev, current):
                warp_sum[name] += temporal.pair_warping_error(a, b, flow, mask)
            for name, a, b in zip(outputs, prev_ab, abs_out):
                change_sum[name] += temporal.pair_warping_error(a, b, flow, mask) ** 0.5
            pairs += 1
        prev, prev_ab = list(current), abs_out
    return {
        "warp": {k: v / pairs for k, v in warp_sum.items()},
        "ab": {k: v / frames for k, v in ab_sum.items()},
        "ab_change": {k: v / pairs for k, v in change_sum.items()},
    }


def loop_clip(src: Path, dst: Path, times: int) -> None:
    """``src``'s frames ``times`` over, as one H.264 clip with continuous timestamps."""
    frames = list(rgb_frames(src))
    with av.open(str(src)) as c:
        vin = c.streams.video[0]
        rate, tb = vin.average_rate, vin.time_base
    with av.open(str(dst), "w") as out:
        h, w = frames[0].shape[:2]
        vout = add_video_encoder(out, "libx264", 18, w, h, tb, rate)
        vout.options = {"crf": "18", "preset": "ultrafast"}
        step = round(1 / (rate * tb))
        for i in range(times * len(frames)):
            f = rgb_to_encoder_frame((frames[i % len(frames)] * 255).round().astype(np.uint8), vout.pix_fmt)
            f.pts, f.time_base = i * step, tb
            for p in vout.encode(f):
                out.mux(p)
        for p in vout.encode(None):
            out.mux(p)


def peak_rss_mb(clip: Path, dst: Path, threads: int) -> tuple[float, int]:
    """Peak RSS (MB) of a child process that colourises ``clip``; and the frame count."""
    code = (
        "import resource, sys, torch; from pathlib import Path;"
        f"torch.set_num_threads({threads});"
        "from engines.pipeline import load_colorizer; from engines.runtime.backends import select_backend;"
        "from engines.video.film import colorize_video;"
        "c = load_colorizer('regression', select_backend('cpu'));"
        f"r = colorize_video(Path({str(clip)!r}), Path({str(dst)!r}), c.predict_ab);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.frames)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    kb, frames = out.stdout.split()[-2:]
    return int(kb) / 1024, int(frames)


def calibrate_cuts(dev: Path) -> None:
    """Print the scene-cut statistic within the dev clips and across joins of two different clips."""
    clips = sorted(dev.glob("*.mp4"))
    first, last, within = {}, {}, {}
    for clip in clips:
        hists = []
        for rgb in rgb_frames(clip):
            l = color.rgb_to_lightness(torch.from_numpy(rgb).permute(2, 0, 1))[0].numpy()
            hists.append(
                temporal.lightness_histogram(
                    temporal.lightness_u8(temporal.resize_long_side(l, temporal.FLOW_LONG_SIDE))
                )
            )
        within[clip.name] = max(temporal.cut_score(a, b) for a, b in itertools.pairwise(hists))
        first[clip.name], last[clip.name] = hists[0], hists[-1]
        print(f"{clip.name:28s} largest consecutive-frame distance {within[clip.name]:.3f}")
    davis = [c.name for c in clips if c.name.startswith("davis")]
    joins = [temporal.cut_score(last[a], first[b]) for a, b in itertools.permutations(davis, 2)]
    print(f"joins of two different davis clips ({len(joins)}): min {min(joins):.3f}, median {np.median(joins):.3f}")
    print(f"threshold in use: {temporal.DEFAULT_SCENE_CUT_THRESHOLD}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEV / "davis-blackswan.mp4")
    p.add_argument("--dev", type=Path, default=DEV, help="folder of dev clips for the quality table")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "video.md")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (the pipeline's stages run in parallel)"
    )
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--calibrate-cuts", action="store_true")
    args = p.parse_args()
    if args.calibrate_cuts:
        calibrate_cuts(args.dev)
        return

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    colorizer = load_colorizer("regression", select_backend("cpu"))
    lines = [
        "# Video pipeline benchmark",
        "",
        (
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
            f"{load[0]:.1f} at the start (other jobs were running); torch {torch.__version__} "
            f"({args.threads} intra-op thread), PyAV {av.__version__} (FFmpeg libavcodec "
            f"{'.'.join(map(str, av.library_versions['libavcodec']))}), OpenCV {cv2.__version__}. "
            f"Encoder: libx264 crf 18, preset medium. Command: `python -m benchmarks.video`."
        ),
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        speed = measure_speed(args.clip, colorizer.predict_ab, args.repeat, tmp)
        floor_fps = speed["floor"][0]
        lines += [
            f"## Speed on {args.clip.name} (best of {args.repeat})",
            "",
            "| run | frames/s | vs floor | CPU ms/frame |",
            "|---|---:|---:|---:|",
        ]
        labels = {
            "floor": "decode + re-encode (floor)",
            "off": "pipeline, smoothing off",
            "on": "pipeline, smoothing on",
        }
        for name, (fps, cpu_ms) in speed.items():
            lines.append(f"| {labels[name]} | {fps:.1f} | {fps / floor_fps:.2f}x | {cpu_ms:.0f} |")
        # On a shared machine the ratios are only comparable with the load they were measured under.
        lines += ["", f"Load average {os.getloadavg()[0]:.1f} after the speed runs."]
        print("\n".join(lines), flush=True)

        if not args.skip_quality:
            clips = sorted(Path(c) for c in glob.glob(str(args.dev / "davis-*.mp4")))
            lines += [
                "",
                "## Temporal stability and colour accuracy (davis clips as B&W input)",
                "",
                (
                    "E_warp: warping error x 1000 (Lai et al. 2018; RGB, lower is steadier). ab change: RMS CIELAB "
                    "ab distance between consecutive output frames along the motion (the chroma part of the "
                    "flicker). ab error: mean distance of the output's ab to the original's (lower is closer)."
                ),
                "",
                (
                    "| clip | frames | E_warp original | E_warp off | E_warp on | ab change off | ab change on "
                    "| ab error off | ab error on |"
                ),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            totals = np.zeros(7)
            for clip in clips:
                outs = {}
                for mode in ("off", "flow"):
                    outs[mode] = tmp / f"{clip.stem}-{mode}.mp4"
                    report = colorize_video(clip, outs[mode], colorizer.predict_ab, VideoOptions(smoothing=mode))
                q = clip_quality(clip, outs)
                row = np.array(
                    [
                        1000 * q["warp"]["original"],
                        1000 * q["warp"]["off"],
                        1000 * q["warp"]["flow"],
                        q["ab_change"]["off"],
                        q["ab_change"]["flow"],
                        q["ab"]["off"],
                        q["ab"]["flow"],
                    ]
                )
                totals += row
                lines.append(f"| {clip.stem} | {report.frames} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
                print(lines[-1], flush=True)
            mean = totals / len(clips)
            lines.append("| **mean** | | " + " | ".join(f"**{v:.2f}**" for v in mean) + " |")

        if not args.skip_memory:
            long_clip = tmp / "long.mp4"
            loop_clip(args.clip, long_clip, 4)
            short_mb, short_n = peak_rss_mb(args.clip, tmp / "m1.mp4", args.threads)
            long_mb, long_n = peak_rss_mb(long_clip, tmp / "m4.mp4", args.threads)
            lines += [
                "",
                "## Memory (peak RSS of a child process, smoothing on)",
                "",
                "| clip | frames | peak RSS (MB) |",
                "|---|---:|---:|",
                f"| {args.clip.name} | {short_n} | {short_mb:.0f} |",
                f"| the same, looped 4 times | {long_n} | {long_mb:.0f} |",
            ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
