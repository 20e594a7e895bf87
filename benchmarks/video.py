"""Film colourisation: throughput against a plain re-encode, temporal stability and colour accuracy.

    python -m benchmarks.video [--clip gray.mp4] [--dev ../shared/data/video-dev] [--pause-pid PID]
    python -m benchmarks.video --calibrate-cuts    # the scene-cut statistic on the dev clips

Speed (the same clip, interleaved runs, median of ``--repeat`` each):
  floor      decode -> RGB -> re-encode with the pipeline's own encoder settings (no colour work), in process
  command    the whole ``colorize CLIP --model gan --backend cpu`` command in a fresh process (start-up,
             model load, smoothing on), as a user runs it
  off / on   ``engines.video.film.colorize_video`` in process with the shipped regression engine, smoothing off / on
The clip (``--clip``; default: the eight davis clips joined and made black and white, 854x480, 425
frames, built in a temporary folder by ``make_gray_clip``) is what a user would colour. Frames per
second are wall-clock; CPU ms per frame (user + system, children included) is given too, because on
a shared machine the wall-clock ratio also measures how much of the CPU the run was given.
``--pause-pid PID`` stops that process (e.g. a training run) during the timed runs only.

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
import contextlib
import itertools
import os
import platform
import signal
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
from engines.files import write_text
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend
from engines.video import temporal
from engines.video.film import VideoOptions, colorize_video
from engines.video.streams import add_video_encoder, decode_colorspace, rgb_to_encoder_frame

DEV = ROOT.parent / "shared" / "data" / "video-dev"


QUALITY_HEADING = "## Temporal stability"
MEMORY_HEADING = "## Memory"
KEPT_NOTE = "(Not measured by this run: kept from the previous version of this file.)"


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _with_descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc; just ``pid`` where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


@contextlib.contextmanager
def paused(pid: int | list[int] | None) -> Iterator[None]:
    """SIGSTOP ``pid`` (or each of a list) and its descendants for the duration (None: nothing), SIGCONT
    whatever happens. Descendants too: a pid file may name the shell that started the real work (seen
    2026-12-01, when stopping only the shell left the training run using both cores during the timed runs)."""
    if not pid:
        yield
        return
    pids = [d for p in ([pid] if isinstance(pid, int) else pid) for d in _with_descendants(p)]
    try:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        yield
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)


def make_gray_clip(clips: list[Path], dst: Path) -> int:
    """Join ``clips`` (same size) into one black-and-white H.264 clip, libx264 crf 18, with neutral
    chroma as a B&W film has; returns the frame count. Gray is BT.601 luma of the decoded RGB."""
    with av.open(str(clips[0])) as c:
        vin = c.streams.video[0]
        rate, tb = vin.average_rate, vin.time_base
        w, h = vin.codec_context.width, vin.codec_context.height
    n = 0
    with av.open(str(dst), "w") as out:
        vout = add_video_encoder(out, "libx264", 18, w, h, tb, rate)
        step = round(1 / (rate * tb))
        for clip in clips:
            for rgb in video_frames(clip):
                gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
                f = rgb_to_encoder_frame(cv2.merge((gray, gray, gray)), vout.pix_fmt)
                f.pts, f.time_base, f.duration = n * step, tb, step
                for p in vout.encode(f):
                    out.mux(p)
                n += 1
        for p in vout.encode(None):
            out.mux(p)
    return n


def command_run(clip: Path, dst: Path, model: str, root: Path, backend: str = "cpu", cache: Path | None = None) -> int:
    """The whole ``colorize CLIP -o DST --model MODEL --backend BACKEND`` command, run from ``root``'s code
    in a fresh process (with ``cache`` as its cache folder); returns the frame count of the output."""
    cmd = [sys.executable, "-m", "colorcli", str(clip), "-o", str(dst), "--model", model, "--backend", backend]
    env = {**os.environ, **({"COLORIZE_CACHE_DIR": str(cache)} if cache else {})}
    subprocess.run([*cmd, "--overwrite"], cwd=root, env=env, check=True, capture_output=True)
    with av.open(str(dst)) as c:
        return c.streams.video[0].frames


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


def measure_speed(
    clip: Path, predict_ab, repeat: int, tmp: Path, model: str, root: Path
) -> dict[str, tuple[float, float]]:
    """name -> (frames/s wall-clock, CPU ms/frame), medians of ``repeat`` interleaved runs."""
    # auto: the path without PyTorch once a first run (this warm-up) has left the export in the cache.
    command_run(clip, tmp / "command.mp4", model, root, "auto", tmp / "cache")
    runs = {
        "floor": lambda: floor_transcode(clip, tmp / "floor.mp4", VideoOptions()),
        "command auto": lambda: command_run(clip, tmp / "command.mp4", model, root, "auto", tmp / "cache"),
        "command": lambda: command_run(clip, tmp / "command.mp4", model, root, "cpu", tmp / "cache"),
        "off": lambda: colorize_video(clip, tmp / "off.mp4", predict_ab, VideoOptions(smoothing="off")).frames,
        "on": lambda: colorize_video(clip, tmp / "on.mp4", predict_ab, VideoOptions(smoothing="flow")).frames,
    }
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), _cpu_seconds()
            frames = run()
            wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            got[name].append((frames / wall, 1000 * cpu / frames))
    return {name: sorted(values)[len(values) // 2] for name, values in got.items()}


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
        f"r = colorize_video(Path({str(clip)!r}), Path({str(dst)!r}), c.predict_frames);"
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, help="default: the davis clips joined and made black and white")
    p.add_argument("--make-clip", type=Path, help="only write the default clip to this path, and stop")
    p.add_argument("--dev", type=Path, default=DEV, help="folder of dev clips for the quality table")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "video.md")
    p.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (the pipeline's stages run in parallel)"
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--model", default="gan", help="engine of the whole-command run")
    p.add_argument("--root", type=Path, default=ROOT, help="checkout whose code the whole-command run uses")
    p.add_argument(
        "--pause-pid",
        type=int,
        action="append",
        help="a process to stop (SIGSTOP) during the timed runs only (repeatable)",
    )
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--calibrate-cuts", action="store_true")
    return p


def _speed_section(args: argparse.Namespace, load: tuple, clip: Path, predict_ab, tmp: Path) -> list[str]:
    """The machine line (``load``: the load average at the start) and the speed table (timed with
    ``--pause-pid`` stopped)."""
    with av.open(str(clip)) as c:
        v = c.streams.video[0]
        clip_desc = f"{clip.name} ({v.codec_context.width}x{v.codec_context.height}, {v.frames} frames)"
    with paused(args.pause_pid):
        load_timed = os.getloadavg()[0]
        speed = measure_speed(clip, predict_ab, args.repeat, tmp, args.model, args.root)
        load_after = os.getloadavg()[0]
    lines = [
        "# Video pipeline benchmark",
        "",
        (
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
            f"{load[0]:.1f} at the start"
            + (f" (processes {args.pause_pid} stopped during the timed runs)" if args.pause_pid else "")
            + f"; torch {torch.__version__} ({args.threads} intra-op thread in process; the command uses its "
            f"default), PyAV {av.__version__} (FFmpeg libavcodec "
            f"{'.'.join(map(str, av.library_versions['libavcodec']))}), OpenCV {cv2.__version__}. "
            f"Encoder: libx264 crf 18, preset medium. Command: `python -m benchmarks.video`."
        ),
        "",
    ]
    floor_fps = speed["floor"][0]
    lines += [
        f"## Speed on {clip_desc} (median of {args.repeat}; of two, the faster)",
        "",
        "| run | frames/s | vs floor | CPU ms/frame |",
        "|---|---:|---:|---:|",
    ]
    labels = {
        "floor": "decode + re-encode (floor)",
        "command auto": f"`colorize CLIP --model {args.model}` (whole command, smoothing on; auto: without PyTorch)",
        "command": f"`colorize CLIP --model {args.model} --backend cpu` (whole command, smoothing on; PyTorch)",
        "off": "pipeline in process, regression, smoothing off",
        "on": "pipeline in process, regression, smoothing on",
    }
    for name, (fps, cpu_ms) in speed.items():
        lines.append(f"| {labels[name]} | {fps:.1f} | {fps / floor_fps:.2f}x | {cpu_ms:.0f} |")
    # On a shared machine the ratios are only comparable with the load they were measured under.
    lines += ["", f"Load average {load_timed:.1f} when the speed runs started, {load_after:.1f} after them."]
    return lines


def _quality_section(clips: list[Path], predict_ab, tmp: Path) -> list[str]:
    """Warping error, ab change and ab error of each clip, smoothing off and on; rows printed as they come."""
    lines = [
        "",
        f"{QUALITY_HEADING} and colour accuracy (davis clips as B&W input)",
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
            report = colorize_video(clip, outs[mode], predict_ab, VideoOptions(smoothing=mode))
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
    return lines


def _memory_section(clip: Path, tmp: Path, threads: int) -> list[str]:
    """Peak RSS of a child process on a clip and on the same clip looped four times."""
    long_clip = tmp / "long.mp4"
    loop_clip(clip, long_clip, 4)
    short_mb, short_n = peak_rss_mb(clip, tmp / "m1.mp4", threads)
    long_mb, long_n = peak_rss_mb(long_clip, tmp / "m4.mp4", threads)
    return [
        "",
        f"{MEMORY_HEADING} (peak RSS of a child process, smoothing on)",
        "",
        "| clip | frames | peak RSS (MB) |",
        "|---|---:|---:|",
        f"| {clip.name} | {short_n} | {short_mb:.0f} |",
        f"| the same, looped 4 times | {long_n} | {long_mb:.0f} |",
    ]


def kept_section(path: Path, heading: str) -> list[str]:
    """The section of an earlier results file whose heading starts with ``heading`` (up to the next
    section), marked as not re-measured: a run that skips a section keeps the last measured figures
    instead of dropping them from the file. Empty when the file or the section is missing."""
    lines = path.read_text().splitlines() if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = [line for line in lines[start + 1 : end] if line != KEPT_NOTE]
    while body and not body[0].strip():
        body.pop(0)
    while body and not body[-1].strip():
        body.pop()
    return ["", lines[start], "", KEPT_NOTE, "", *body]


def main() -> None:
    args = _parser().parse_args()
    if args.calibrate_cuts:
        calibrate_cuts(args.dev)
        return
    davis = sorted(args.dev.glob("davis-*.mp4"))
    if args.make_clip:
        print(f"{args.make_clip}: {make_gray_clip(davis, args.make_clip)} frames")
        return

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    colorizer = load_colorizer("regression", select_backend("cpu"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        clip = args.clip
        if clip is None:
            clip = tmp / "davis-joined-gray.mp4"
            make_gray_clip(davis, clip)
        lines = _speed_section(args, load, clip, colorizer.predict_frames, tmp)
        print("\n".join(lines), flush=True)
        if args.skip_quality:
            lines += kept_section(args.out, QUALITY_HEADING)
        else:
            lines += _quality_section(davis, colorizer.predict_frames, tmp)
        if args.skip_memory:
            lines += kept_section(args.out, MEMORY_HEADING)
        else:
            lines += _memory_section(davis[0], tmp, args.threads)
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
