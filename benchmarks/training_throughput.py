"""Training throughput: the data pipeline, the model step, and both together, per task family.

    python -m benchmarks.training_throughput [--threads N] [--precisions float32 bfloat16] [--repeat 5]
        [--recipes regression gan ...]

For each recipe under training/recipes, on its real training images (loaded and split as
``training.loop`` does, from the npz cache), in one process:
  data      images/s of ``BatchSampler.next_batch`` alone (random scaled crops and flips) at the
            recipe's batch size and crop size
  step      images/s of ``task.step`` alone, on one pre-made batch reused
  together  images/s of ``task.step(sampler.next_batch())``, as the training loop does them
Each family is timed in each precision asked for (``float32``; ``bfloat16``: autocast with
channels-last, as ``training.tasks`` runs it where the CPU has bf16 in hardware), and its step's
achieved GFLOP/s is set beside the machine's practical ceiling, measured in the same run: a large
3x3 convolution (256 to 256 channels, batch 32 of 32x32, forward) in each precision.
The GAN is timed in adversarial mode (past its generator-only pre-training steps). Its full step is
also set against the sum of the passes it does, each timed on its own: the generator's forward and
backward on the reconstruction loss, the critic's forward and backward on real and fake, and the
critic's forward and backward for the generator's adversarial term. What the step does beyond them
(colour conversion, the two optimiser updates) is the ratio's excess over 1.

The measurements are interleaved, one call of each per round, so that a change in the machine's load
during the run shifts all of them alike; each figure is the median over rounds after warm-up. Training
FLOPs per image (forward and backward, counted by ``torch.utils.flop_counter``) are deterministic.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import ROOT
from benchmarks.video import _cpu_seconds
from engines import color
from engines.files import write_text
from training import distributed
from training.config import TrainConfig, load_recipe
from training.data import BatchSampler, load_source, split
from training.tasks import TASKS, GanTask, chroma_prior

RECIPES = ROOT / "training" / "recipes"
FAMILIES = ("regression", "classification", "gan")


def interleaved_times(fns: dict[str, Callable[[], object]], repeat: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each function's timed calls, one call of each per round (see the module docstring)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def spread(times: dict[str, list[float]]) -> float:
    """The largest slowest / fastest round ratio among the measurements: how noisy the medians are."""
    return max(max(ts) / min(ts) for ts in times.values())


def load_training_sets(cfg: TrainConfig, loaded: dict | None = None) -> list[np.ndarray]:
    """The recipe's training images, one array per source; ``loaded`` shares sources between recipes."""
    loaded = {} if loaded is None else loaded
    cache = Path(os.path.expanduser(cfg.cache_dir))
    sets = []
    for src, size in zip(cfg.sources, cfg.source_sizes):
        key = (src, size, cfg.val_fraction)
        if key not in loaded:
            loaded[key] = split(load_source(Path(src), size, cache), cfg.val_fraction)[0]
        sets.append(loaded[key])
    return sets


def build_task(cfg: TrainConfig, train_sets: list[np.ndarray]):
    """The family's task as training builds and places it; a GAN starts adversarial (no generator-only steps)."""
    if cfg.family == "gan":
        cfg = replace(cfg, gan_pretrain_steps=0)
    torch.manual_seed(cfg.seed)
    # The prior sets the classification head's bin count, so it is computed as training does.
    task = TASKS[cfg.family](cfg, chroma_prior(train_sets, cfg.color_space))
    task.place(distributed.init("cpu"))
    return task


def conv_ceiling_gflops(precision: str, repeat: int = 5) -> float:
    """GFLOP/s of a large 3x3 convolution's forward pass in this precision: the machine's practical
    ceiling for the networks' dominant operation."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
    x = torch.randn(32, 256, 32, 32)
    bf16 = precision == "bfloat16"
    if bf16:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    flops = 2 * 256 * 256 * 9 * 32 * 32 * 32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        conv(x)  # warm-up: oneDNN picks its kernel on the first call
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9


def make_sampler(cfg: TrainConfig, train_sets: list[np.ndarray]) -> BatchSampler:
    return BatchSampler(train_sets, cfg.batch_size, cfg.crop_size, cfg.seed, cfg.min_crop_scale, cfg.crop_sizes)


def train_gflops_per_image(task, batch: torch.Tensor) -> float:
    """FLOPs of one training step (forward and backward of every network), per image."""
    with FlopCounterMode(display=False) as counter:
        task.step(batch)
    return counter.get_total_flops() / 1e9 / len(batch)


def measure_family(
    cfg: TrainConfig, train_sets: list[np.ndarray], repeat: int, warmup: int, data_batches: int
) -> dict[str, float]:
    """Images/s of data loading alone, the step alone and both together; training GFLOPs per image."""
    task = build_task(cfg, train_sets)
    sampler = make_sampler(cfg, train_sets)
    batch = sampler.next_batch()

    def data() -> None:
        # Several batches per timed call: one batch takes milliseconds, too short to time alone under load.
        for _ in range(data_batches):
            sampler.next_batch()

    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    times = interleaved_times(
        {"data": data, "step": lambda: task.step(batch), "together": lambda: task.step(sampler.next_batch())},
        repeat,
        warmup,
    )
    # Below the thread count, the process waited for a core: its wall-clock figures are depressed.
    cpu_share = (_cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    t = {name: statistics.median(ts) for name, ts in times.items()}
    b = cfg.batch_size
    return {
        "data": data_batches * b / t["data"],
        "step": b / t["step"],
        "together": b / t["together"],
        "gflops": train_gflops_per_image(task, batch),
        "spread": spread(times),
        "cpu_share": cpu_share,
    }


def gan_passes(task: GanTask, batch: torch.Tensor) -> dict[str, Callable[[], None]]:
    """The passes of an adversarial ``GanTask.step``, each runnable on its own on the same batch.

    They use the task's own networks, losses, precision (bf16 autocast where the task runs it) and
    memory layout; the inputs (lightness, true and generated chroma) are made once beforehand, and no
    optimiser steps, so every call sees the same weights.
    """
    task.net.train()
    task.critic_net.train()
    l_norm, chroma = color.split_chroma(batch.to(task.device), task.cfg.color_space)
    ab_norm = color.normalize_ab(chroma)
    with torch.no_grad(), task.autocast():
        fake_ab = task.net(task._layout(task._generator_input(l_norm))).float()
    real, fake = (task._layout(torch.cat((l_norm, ab), 1)) for ab in (ab_norm, fake_ab))

    def zero_grads() -> None:
        task.opt.zero_grad(set_to_none=True)
        task.opt_d.zero_grad(set_to_none=True)

    def generator() -> None:
        zero_grads()
        with task.autocast():
            pred = task.net(task._layout(task._generator_input(l_norm))).float()
        (task.cfg.gan_recon_weight * task._recon(pred, ab_norm, chroma)).backward()

    def critic_real_fake() -> None:
        zero_grads()
        with task.autocast():
            scores = task.critic_net(real).float(), task.critic_net(fake).float()
        d_loss = task._adversarial(scores[0], True) + task._adversarial(scores[1], False)
        if task.cfg.gan_loss == "wgan-gp":
            d_loss = d_loss + 10.0 * task._gradient_penalty(real, fake)
        d_loss.backward()

    def critic_adversarial() -> None:
        zero_grads()
        # The gradient reaches the generated chroma, as it does on its way back into the generator.
        fake_in = task._layout(torch.cat((l_norm, fake_ab.detach().requires_grad_(True)), 1))
        with task.autocast():
            score = task.critic_net(fake_in).float()
        task._adversarial(score, True).backward()

    return {
        "generator forward + backward (reconstruction loss)": generator,
        "critic forward + backward on real and fake": critic_real_fake,
        "critic forward + backward for the adversarial term": critic_adversarial,
    }


def gan_breakdown(task: GanTask, batch: torch.Tensor, repeat: int, warmup: int) -> dict:
    """Median seconds of each pass and of the full step (interleaved), their sum and full / sum."""
    passes = gan_passes(task, batch)
    times = interleaved_times({**passes, "full": lambda: task.step(batch)}, repeat, warmup)
    t = {name: statistics.median(ts) for name, ts in times.items()}
    parts = {name: t[name] for name in passes}
    total = sum(parts.values())
    return {"parts": parts, "sum": total, "full": t["full"], "ratio": t["full"] / total, "spread": spread(times)}


def machine_line(threads: int, load: tuple[float, float, float], cpu_share: float) -> str:
    return (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} at the start; torch {torch.__version__} ({threads} intra-op "
        f"thread{'s' if threads != 1 else ''}), Python {platform.python_version()}. The benchmark got "
        f"{cpu_share:.2f} CPU-seconds per wall-clock second (user + system over the whole run)."
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(FAMILIES), help="recipe names under training/recipes")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch intra-op threads (the shipped engines were trained on 1)",
    )
    p.add_argument(
        "--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"], help="see above"
    )
    p.add_argument("--repeat", type=int, default=5, help="timed rounds; figures are medians over them")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--data-batches", type=int, default=10, help="batches per timed data-loading call")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "training_throughput.md")
    return p


def _table_head(args: argparse.Namespace) -> list[str]:
    return [
        (
            f"Images/s, median of {args.repeat} interleaved rounds after {args.warmup} warm-up; data loading "
            f"timed over {args.data_batches} batches per round. Data: `BatchSampler.next_batch` alone (random "
            "scaled crops, flips) on the recipe's real training images. Step: `task.step` alone on one batch "
            "reused. Together: sampler then step, as `training.loop` runs them. The GAN is in adversarial "
            "mode. GFLOPs: one training step (forward and backward of every network) per image, counted. "
            "Slowest / fastest round: the largest ratio among the three timings, a measure of their noise. "
            "CPU-s per wall-s: the CPU time the process got during the rounds, per second (at most the "
            "thread count; less means it waited for a core)."
        ),
        "",
        (
            "| family | precision | batch | crop | data img/s | step img/s | together img/s | data share of together "
            "| GFLOPs / image | step GFLOP/s | share of the conv ceiling | slowest / fastest round | CPU-s per wall-s |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]


def _family_rows(args: argparse.Namespace, ceiling: dict[str, float]) -> tuple[list[str], dict, dict | None]:
    """A table row per recipe and precision (printed as they come), the step rates by ``(family,
    precision)``, and the GAN step's breakdown when a GAN recipe is among them."""
    lines: list[str] = []
    loaded: dict = {}
    gan = None
    step_rates: dict[tuple[str, str], float] = {}
    for name in args.recipes:
        recipe = load_recipe(RECIPES / f"{name}.toml")
        t0 = time.perf_counter()
        train_sets = load_training_sets(recipe, loaded)
        print(f"{name}: {sum(map(len, train_sets))} training images ({time.perf_counter() - t0:.0f} s)", flush=True)
        for precision in args.precisions:
            cfg = replace(recipe, precision=precision)
            r = measure_family(cfg, train_sets, args.repeat, args.warmup, args.data_batches)
            step_rates[cfg.family, precision] = r["step"]
            achieved = r["gflops"] * r["step"]
            lines.append(
                f"| {cfg.family} | {precision} | {cfg.batch_size} | {cfg.crop_size} | {r['data']:.0f} "
                f"| {r['step']:.1f} | {r['together']:.1f} | {100 * r['together'] / r['data']:.1f}% "
                f"| {r['gflops']:.2f} | {achieved:.0f} | {100 * achieved / ceiling[precision]:.0f}% "
                f"| {r['spread']:.2f} | {r['cpu_share']:.2f} |"
            )
            print(lines[-1], flush=True)
        if recipe.family == "gan":
            task = build_task(recipe, train_sets)
            gan = gan_breakdown(task, make_sampler(recipe, train_sets).next_batch(), args.repeat, args.warmup)
    return lines, step_rates, gan


def _gan_section(gan: dict) -> list[str]:
    lines = [
        "",
        "## One adversarial GAN step against the passes it does",
        "",
        (
            "Milliseconds per batch, each pass timed on its own on the same batch, interleaved with the "
            "full step. The full step also converts the batch to Lab and runs both optimisers."
        ),
        "",
        "| pass | ms / batch | share of the full step |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {1000 * v:.0f} | {100 * v / gan['full']:.0f}% |" for k, v in gan["parts"].items()]
    lines += [
        f"| sum of the passes | {1000 * gan['sum']:.0f} | {100 * gan['sum'] / gan['full']:.0f}% |",
        f"| full `GanTask.step` | {1000 * gan['full']:.0f} | 100% |",
        "",
        (
            f"Full step / sum of its passes: **{gan['ratio']:.2f}** (slowest / fastest round of any of "
            f"these: {gan['spread']:.2f})."
        ),
    ]
    return lines


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    wall0, cpu0 = time.perf_counter(), _cpu_seconds()
    ceiling = {precision: conv_ceiling_gflops(precision) for precision in args.precisions}
    rows, step_rates, gan = _family_rows(args, ceiling)
    lines = _table_head(args) + rows
    lines += [
        "",
        "Conv ceiling (256 to 256 channels 3x3, batch 32 of 32x32, forward): "
        + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in ceiling.items())
        + ".",
    ]
    if len(args.precisions) == 2:
        ratios = [
            f"{family} {step_rates[family, 'bfloat16'] / step_rates[family, 'float32']:.2f}x"
            for family in dict.fromkeys(f for f, _ in step_rates)
        ]
        lines.append(f"bf16 step img/s over float32's: {', '.join(ratios)}.")
    if gan is not None:
        lines += _gan_section(gan)
    # How much of the machine the run was given: the figures above scale with it under shared load.
    cpu_share = (_cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    command = " ".join(["python -m benchmarks.training_throughput", *sys.argv[1:]])
    header = ["# Training throughput", "", machine_line(args.threads, load, cpu_share) + f" Command: `{command}`.", ""]
    text = "\n".join(header + lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
