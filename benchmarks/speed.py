"""Engine speed per backend and working size, beside Zhang et al.'s ECCV16 network in the same run.

    python -m benchmarks.speed [--sizes 256 512] [--out benchmarks/results]
    python -m benchmarks.speed --photos-folder ../shared/data/photos-dev [--baseline-root CHECKOUT] [--pause-pid PID]

For each engine (and the ECCV16 re-implementation, untrained: see ``benchmarks/eccv16.py``), at each
working size, on every backend this machine has: images per second through the network alone
(medians of timed calls after warm-up, batches as in the table), FLOPs per image (counted by
``torch.utils.flop_counter``, a multiply-add = 2 FLOPs), and the speed ratio to ECCV16 on the same
backend. Then, end to end: the bundled 512x512 example photo coloured in process (latency) and the
whole ``colorize`` command on it in fresh processes (wall time and peak resident memory), first with
an empty cache (the ONNX export and the CPU runner race happen then), then with the cache warm. On a GPU the
FP32/FP16 agreement is measured too. Writes ``speed.md`` and ``speed.png`` under ``--out``.

``--photos-folder`` times only folders of photos and rewrites that section of ``speed.md``: ``--photos``
gray copies (default 200) of the folder's photos (BSDS: 481x321) in a temporary folder, then photos per
second of the whole ``colorize FOLDER -o OUT`` command (median of ``--repeat``) with ``--backend auto``
(the path without PyTorch, ``engines.ort_pipeline``, once the warm-up run has left its export in the
benchmark's own cache) and ``--backend cpu`` (PyTorch), of the ``--backend cpu`` command from each
``--baseline-root``'s code (older checkouts, e.g. ``git worktree``s of earlier commits), and of shell
loops running one ``colorize PHOTO`` process per photo over the first ``--loop-photos`` (each process
costs the same, so fewer suffice). ``--pause-pid`` stops a process (a training run) meanwhile.

Times are comparable only within one run: the table records the machine, the versions, the commit
and the load average when it started.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import ROOT, current_commit
from benchmarks.eccv16 import ECCV16
from engines.files import atomic_path, write_text
from engines.models.registry import ENGINES
from engines.pipeline import load_colorizer
from engines.runtime import backends as runtime
from engines.runtime.precision import float32_network

PHOTO = ROOT / "examples" / "astronaut_gray.jpg"
PHOTOS_HEADING = "## Folders of photos"


def gflops(model: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, model.config.in_channels, size, size))
    return counter.get_total_flops() / 1e9


def median_seconds(fn, min_total: float = 2.0, min_repeat: int = 3, warmup: int = 2) -> float:
    """Median of timed calls: at least ``min_repeat`` and at least ``min_total`` seconds in all."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < min_repeat or (sum(times) < min_total and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    commit = current_commit()
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; GPU: {gpu}. "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}. "
        f"Commit {commit}, {time.strftime('%Y-%m-%d %H:%M')}, load average at start {os.getloadavg()[0]:.1f}."
    )


def networks() -> dict[str, torch.nn.Module]:
    """Each engine's float32 network (unwrapped from the bf16 autocast the CPU backend adds where the
    CPU has native bf16, so that each runner below picks its own precision), and ECCV16's."""
    nets = {name: float32_network(load_colorizer(name, runtime.select_backend("cpu")).model) for name in ENGINES}
    torch.manual_seed(0)
    eccv = ECCV16().eval()
    eccv.config = SimpleNamespace(in_channels=1)  # what the runners and the FLOP counter read
    nets["eccv16"] = eccv
    return nets


def runners(name: str, net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every runner this machine has for ``net``: label -> module taking (N, C, H, W) float32."""
    net = net.to(memory_format=torch.channels_last)
    out = {"cpu (PyTorch)": net}
    if runtime.cpu_has_fast_bf16():  # what `--backend cpu` runs on this CPU
        out["cpu bf16 (PyTorch)"] = runtime.Bf16Model(net)
    if runtime.ort_problem() is None:
        out["onnxruntime"] = runtime.OnnxRuntimeModel(net, f"speed-benchmark-{name}")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        import copy

        out["cuda FP32"] = runtime.CudaModel(copy.deepcopy(net).float(), half=False, graphs=False)
        out["cuda FP16 + graphs"] = runtime.CudaModel(copy.deepcopy(net).float(), half=True, graphs=True)
    return out


def batch_for(label: str, size: int) -> int:
    if label.startswith("cuda"):
        return 64 if size <= 256 else 16
    return 4 if size <= 256 else 1


def end_to_end(model: str) -> tuple[float, float, float, float, float]:
    """For ``model`` on the auto backend: in-process photo latency (ms); the whole command in a fresh
    process, first run (empty cache: ONNX export and the CPU runner race) wall s and peak RSS MB,
    then later runs (cache warm) median wall s and peak RSS MB."""
    from engines.media.photo_io import read_photo

    c = load_colorizer(model, runtime.select_backend("auto"))
    rgb = read_photo(PHOTO).rgb
    latency = median_seconds(lambda: c.colorize(rgb), min_total=1.0) * 1000
    # VmHWM (this process's peak resident memory) rather than ru_maxrss, which on Linux keeps the
    # forking parent's peak across exec: here that would be the benchmark's own, with every model loaded.
    code = (
        "import sys; from colorcli.app import main; sys.argv = ['colorize', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('PEAK', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    walls, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "COLORIZE_CACHE_DIR": f"{tmp}/cache"}
        for i in range(4):
            t0 = time.perf_counter()
            p = subprocess.run(
                [sys.executable, "-c", code, str(PHOTO), "-o", f"{tmp}/out{i}.jpg", "--model", model],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
                env=env,
            )
            walls.append(time.perf_counter() - t0)
            peaks.append(int(p.stdout.split("PEAK")[-1]) / 1024)
    return latency, walls[0], peaks[0], statistics.median(walls[1:]), max(peaks[1:])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    labels = list(dict.fromkeys(r["backend"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    width = 0.8 / len(labels)
    for ax, size in zip(axes[0], sizes):
        for j, label in enumerate(labels):
            vals = [
                next((r["ips"] for r in rows if (r["model"], r["size"], r["backend"]) == (m, size, label)), 0)
                for m in models
            ]
            ax.bar(np.arange(len(models)) + j * width, vals, width, label=label)
        ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
        ax.set_yscale("log")
        ax.set_ylabel("images / s (log)")
        ax.set_title(f"working size {size}x{size}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def make_gray_photos(source: Path, n: int, dst: Path) -> list[Path]:
    """``n`` black-and-white JPEGs (quality 95) of ``source``'s photos in ``dst``, cycling if it has fewer."""
    import cv2

    found = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not found:
        raise SystemExit(f"no photos in {source}")
    dst.mkdir(parents=True)
    made = []
    for k in range(n):
        src = found[k % len(found)]
        out = dst / (f"{src.stem}.jpg" if k < len(found) else f"{src.stem}-{k // len(found)}.jpg")
        cv2.imwrite(str(out), cv2.imread(str(src), cv2.IMREAD_GRAYSCALE), [cv2.IMWRITE_JPEG_QUALITY, 95])
        made.append(out)
    return made


def folder_command(root: Path, folder: Path, out: Path, backend: str, env: dict) -> float:
    """Wall seconds of the whole ``colorize FOLDER -o OUT --backend BACKEND`` command, run from ``root``'s code."""
    cmd = [sys.executable, "-m", "colorcli", str(folder), "-o", str(out), "--backend", backend, "--overwrite"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def shell_loop(photos: list[Path], out: Path, backend: str, env: dict) -> float:
    """Wall seconds of a shell loop running one ``colorize PHOTO`` process per photo."""
    script = 'for f in "$@"; do "$PY" -m colorcli "$f" -o "$OUT/" --backend "$BACKEND" --overwrite || exit 1; done'
    env = {**env, "PY": sys.executable, "OUT": str(out), "BACKEND": backend}
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", script, "loop", *map(str, photos)], cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def photos_section(args: argparse.Namespace) -> list[str]:
    """The folder-of-photos table (see the module docstring)."""
    import cv2

    from benchmarks.video import paused

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "COLORIZE_CACHE_DIR": str(tmp / "cache")}  # the user's cache stays untouched
        photos = make_gray_photos(args.photos_folder, args.photos, tmp / "in")
        sizes = sorted({tuple(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape[::-1]) for p in photos})
        # auto: the path without PyTorch, once a first run (the warm-up below) has left its export.
        commands = {"this checkout, `--backend auto`": (ROOT, "auto"), "this checkout, `--backend cpu`": (ROOT, "cpu")}
        for root in args.baseline_root:
            commands[f"baseline ({current_commit(root)}), `--backend cpu`"] = (root, "cpu")
        walls: dict[str, list[float]] = {name: [] for name in commands}
        load = os.getloadavg()[0]
        t_pause = time.perf_counter()
        with paused(args.pause_pid):
            for root, backend in commands.values():  # warm-up: caches (the export, the CPU race), file cache
                folder_command(root, tmp / "in", tmp / "out", backend, env)
            for _ in range(args.repeat):  # interleaved, so that a change in load hits every command
                for name, (root, backend) in commands.items():
                    walls[name].append(folder_command(root, tmp / "in", tmp / "out", backend, env))
                    print(f"{name}: {walls[name][-1]:.2f} s", flush=True)
            loop_photos = photos[: args.loop_photos]
            loops = {b: shell_loop(loop_photos, tmp / "loop", b, env) for b in ("auto", "cpu")}
        paused_s = time.perf_counter() - t_pause
        written = len(list((tmp / "out").iterdir()))
        if written != len(photos):
            raise SystemExit(f"the command wrote {written} of {len(photos)} photos")
    rate = {name: len(photos) / statistics.median(w) for name, w in walls.items()}
    rate |= {f"shell loop, one `colorize PHOTO --backend {b}` process each (first {len(loop_photos)} photos)": len(
        loop_photos
    ) / t for b, t in loops.items()}  # fmt: skip
    reference = list(rate)[2] if args.baseline_root else list(rate)[1]
    lines = [
        PHOTOS_HEADING,
        "",
        f"{len(photos)} gray JPEGs made from `{args.photos_folder.name}` "
        f"({', '.join(f'{w}x{h}' for w, h in sizes)}), default engine; "
        f"median of {args.repeat} interleaved runs per command after a warm-up run of each; load average {load:.1f} before"
        + (
            f", processes {args.pause_pid} stopped during the timed runs ({paused_s:.0f} s)." if args.pause_pid else "."
        ),
        f"Commit {current_commit()}, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores.",
        "",
        f"Speed ratios are against: {reference}.",
        "",
        "| how | photos/s | speed ratio |",
        "|---|---:|---:|",
    ]
    for name, r in rate.items():
        lines.append(f"| {name} | {r:.2f} | {r / rate[reference]:.2f}x |")
    return lines


def write_section(path: Path, lines: list[str]) -> None:
    """Replace (or append) the section starting at ``lines[0]`` in ``path``; it stays last in the file."""
    text = path.read_text() if path.exists() else ""
    head = text.split(f"\n{lines[0]}\n")[0].rstrip("\n") if lines[0] in text else text.rstrip("\n")
    write_text(path, (head + "\n\n" if head else "") + "\n".join(lines) + "\n")


def main() -> None:
    args = parse_args()
    if args.photos_folder:
        lines = photos_section(args)
        args.out.mkdir(parents=True, exist_ok=True)
        write_section(args.out / "speed.md", lines)
        print("\n".join(lines))
        return
    header = machine()
    print(header, flush=True)
    with tempfile.TemporaryDirectory() as cache, torch.inference_mode():
        os.environ["COLORIZE_CACHE_DIR"] = cache  # the benchmark's ONNX exports stay out of the user's cache
        rows, agreement = network_rows(args.sizes)
    lines = [header, "", *network_table(rows), "", *end_to_end_table()]
    if agreement:  # where this machine has bf16 in hardware or a GPU
        lines += [
            "",
            "Reduced precision against float32 on the same inputs (8 random 256x256), decoded ab:",
            "",
            "| engine | runners | mean |ab| difference | max |ab| difference |",
            "|---|---|---:|---:|",
            *agreement,
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    old = (args.out / "speed.md").read_text() if (args.out / "speed.md").exists() else ""
    kept = old[old.index(PHOTOS_HEADING) :] if PHOTOS_HEADING in old else ""  # from a --photos-folder run
    write_text(args.out / "speed.md", "\n".join(lines) + "\n" + (f"\n{kept}" if kept else ""))
    plot(rows, args.out / "speed.png")
    print("\n".join(lines))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--photos-folder", type=Path, help="time folders of photos only (see above)")
    p.add_argument("--photos", type=int, default=200)
    p.add_argument("--loop-photos", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--baseline-root",
        type=Path,
        action="append",
        default=[],
        help="an older checkout to run the same command from (repeatable)",
    )
    p.add_argument(
        "--pause-pid",
        type=int,
        action="append",
        help="a process to stop (SIGSTOP) during the timed runs only (repeatable)",
    )
    return p.parse_args()


def network_rows(sizes: list[int]) -> tuple[list[dict], list[str]]:
    """Every network on every runner at every size: one row each (images/s, GFLOPs); and on a GPU the
    FP16-against-FP32 table's rows."""
    rows: list[dict] = []
    agreement: list[str] = []
    for name, net in networks().items():
        for label, runner in runners(name, net).items():
            for size in sizes:
                n = batch_for(label, size)
                x = torch.rand(n, net.config.in_channels, size, size) * 2 - 1
                ips = n / median_seconds(_timed_call(label, runner, x))
                rows.append(
                    {"model": name, "size": size, "backend": label, "batch": n, "ips": ips, "gflops": gflops(net, size)}
                )
                print(f"{name} {size} {label}: {ips:.1f} img/s", flush=True)
        pairs = [("cpu bf16 (PyTorch)", "cpu (PyTorch)"), ("cuda FP16 + graphs", "cuda FP32")]
        r = runners(name, net)
        for low, full in pairs:
            if name in ENGINES and low in r:
                decode = load_colorizer(name, runtime.select_backend("cpu")).decode  # raw output -> ab
                x = torch.rand(8, net.config.in_channels, 256, 256) * 2 - 1
                a, b = (decode(r[k](x).float().cpu()) for k in (low, full))
                d = (a - b).abs()
                agreement.append(f"| {name} | {low} against {full} | {d.mean().item():.3f} | {d.max().item():.3f} |")
    return rows, agreement


def _timed_call(label: str, runner, x: torch.Tensor):
    """What one timed call runs: ``runner`` on ``x`` (on the GPU for a CUDA runner, waiting for it to finish)."""
    if label.startswith("cuda"):  # pragma: no cover - GPU machines only
        x = x.cuda()

        def call():
            runner(x)
            torch.cuda.synchronize()

        return call
    return lambda: runner(x)


def network_table(rows: list[dict]) -> list[str]:
    """The network-alone table, each row's speed also as a ratio to ECCV16's on the same backend and size."""
    eccv = {(r["size"], r["backend"]): r["ips"] for r in rows if r["model"] == "eccv16"}
    lines = [
        "Network alone (medians after warm-up):",
        "",
        "| engine | size | backend | batch | images/s | GFLOPs/image | speed vs ECCV16, same backend |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["ips"] / eccv[(r["size"], r["backend"])]
        lines.append(
            f"| {r['model']} | {r['size']} | {r['backend']} | {r['batch']} | {r['ips']:.1f} "
            f"| {r['gflops']:.2f} | {ratio:.1f}x |"
        )
    return lines


def end_to_end_table() -> list[str]:
    """The end-to-end table, one engine at a time (each row printed as it comes)."""
    lines = [
        f"End to end on `{PHOTO.relative_to(ROOT)}` (512x512), `--backend auto`:",
        "",
        (
            "| engine | in-process photo latency (ms) | first command: wall (s) | peak RSS (MB) "
            "| later commands: wall (s) | peak RSS (MB) |"
        ),
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ENGINES:
        lat, wall0, peak0, wall, peak = end_to_end(name)
        lines.append(f"| {name} | {lat:.0f} | {wall0:.2f} | {peak0:.0f} | {wall:.2f} | {peak:.0f} |")
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
