"""Engine cost: FLOPs (counted, deterministic), throughput and photo latency on this machine.

    python -m benchmarks.speed [--out benchmarks/results]

FLOPs are counted by ``torch.utils.flop_counter`` (a multiply-add counts as 2 FLOPs, the convention
under which Zhang et al.'s ECCV16 network costs about 84 GFLOPs at 256x256). Times are medians of
repeated runs after warm-up, in one process; they mean something only relative to each other and on
the machine named in the output.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from engines.export import INPUT_NAME, export_onnx
from engines.pipeline import load_colorizer
from engines.registry import ENGINES
from engines.runtime import select_backend

ROOT = Path(__file__).resolve().parents[1]
ECCV16_GFLOPS_256 = 84.0  # as stated for Zhang et al. 2016's network in the project's issue


def gflops(model: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, model.config.in_channels, size, size))
    return counter.get_total_flops() / 1e9


def median_seconds(fn, repeat: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def onnx_session(model: torch.nn.Module, folder: Path):
    import onnxruntime as ort

    path = folder / "speed-engine.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    path.unlink()
    return session


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    backend = select_backend("cpu")
    lines = [
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        (
            f"| engine | size | GFLOPs / image | vs ECCV16 at that size | PyTorch images/s (batch {args.batch}) "
            "| ONNX Runtime images/s | photo 481x321 end to end (ms) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    photo = np.random.default_rng(0).random((321, 481, 3), dtype=np.float32)
    for name in ENGINES:
        c = load_colorizer(name, backend)
        session = onnx_session(c.model, args.out)
        for size in (128, 256, 512):
            g = gflops(c.model, size)
            x = torch.randn(args.batch, 1, size, size)
            repeat = 5 if size == 512 else 10
            with torch.inference_mode():
                s = median_seconds(lambda c=c, x=x: c.model(x), repeat=repeat)
            ort_s = median_seconds(lambda s_=session, x=x: s_.run(None, {INPUT_NAME: x.numpy()}), repeat=repeat)
            c.working_size = size
            photo_ms = median_seconds(lambda c=c: c.colorize(photo), repeat=5) * 1000
            vs_eccv16 = g / (ECCV16_GFLOPS_256 * (size / 256) ** 2) * 100
            lines.append(
                f"| {name} | {size} | {g:.2f} | {vs_eccv16:.1f}% | {args.batch / s:.0f} "
                f"| {args.batch / ort_s:.0f} | {photo_ms:.0f} |"
            )
            print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
