"""``python -m training RECIPE.toml --out DIR``: train (or resume) an engine from a recipe.

Several GPUs (or, for testing, several CPU processes):
``torchrun --nproc_per_node=N -m training RECIPE.toml --out DIR`` (``batch_size`` is the global batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from engines.runtime import backends as runtime
from training.config import TrainConfig, load_recipe
from training.loop import Progress, train_command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    p.add_argument("recipe", type=Path, help="TOML recipe (see training/recipes/)")
    p.add_argument("--out", type=Path, required=True, help="run folder: state.pt, engine.pt, log.jsonl")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key; VALUE is TOML, or a plain string (e.g. --set max_steps=500 --set loss=l1)",
    )
    p.add_argument("--fresh", action="store_true", help="ignore an existing state.pt in --out")
    args = p.parse_args(argv)
    try:
        cfg = load_recipe(args.recipe, parse_overrides(args.set))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Batch-sized activations are freed and allocated again every step: keep them in the heap rather
    # than mapping fresh pages each time (the campaign run spent a fifth of its CPU time in the kernel,
    # faulting pages in, until this was set through glibc's environment variables; 8% after).
    runtime.retain_freed_memory()

    main_rank = int(os.environ.get("RANK", "0")) == 0
    progress, bar = _progress_display(cfg, main_rank)
    try:
        status, best = train_command(cfg, args.out, progress, resume=not args.fresh)
    finally:
        if bar is not None:
            bar.stop()
    if status == 0 and main_rank:  # under torchrun, only the main process reports
        print(json.dumps(best))
    return status


def parse_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as recipe keys: VALUE is TOML, or else a plain string (paths, names)."""
    import tomllib

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, not {item!r}")
        try:
            overrides.update(tomllib.loads(f"{key.strip()} = {value}"))
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value
    return overrides


def _progress_display(cfg: TrainConfig, main_rank: bool) -> tuple[Progress, object | None]:
    """A live bar on a terminal (returned, to be stopped), plain lines every 10 s in logs."""
    if main_rank and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        bar = Bar(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        bar_task = bar.add_task("train", total=cfg.max_steps, info="")
        bar.start()

        def show(step: int, s: dict) -> None:
            bar.update(bar_task, completed=step, info=f"loss {s['loss']:.4f}  {s['img_per_s']:.0f} img/s")

        return show, bar

    last = [0.0]

    def log(step: int, s: dict) -> None:
        if time.monotonic() - last[0] > 10 and main_rank:
            last[0] = time.monotonic()
            print(
                f"step {step}/{cfg.max_steps} loss {s['loss']:.4f} lr {s['lr']:.2e} {s['img_per_s']:.0f} img/s",
                flush=True,
            )

    return log, None


if __name__ == "__main__":
    sys.exit(main())
