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

from engines.models.checkpoint import CheckpointError
from engines.runtime import backends as runtime
from training import distributed
from training.config import load_recipe
from training.data import DataError
from training.loop import Interrupted, train


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

    import tomllib

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            print(f"error: --set takes KEY=VALUE, not {item!r}", file=sys.stderr)
            return 2
        try:
            overrides.update(tomllib.loads(f"{key.strip()} = {value}"))
        except tomllib.TOMLDecodeError:  # not TOML: take it as a plain string (paths, names)
            overrides[key.strip()] = value
    try:
        cfg = load_recipe(args.recipe, overrides)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Batch-sized activations are freed and allocated again every step: keep them in the heap rather
    # than mapping fresh pages each time (the campaign run spent a fifth of its CPU time in the kernel,
    # faulting pages in, until this was set through glibc's environment variables; 8% after).
    runtime.retain_freed_memory()

    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank and sys.stderr.isatty():
        # A live bar on a terminal; plain lines every 10 s in logs.
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        bar_task = bar.add_task("train", total=cfg.max_steps, info="")
        bar.start()

        def progress(step: int, s: dict) -> None:
            bar.update(bar_task, completed=step, info=f"loss {s['loss']:.4f}  {s['img_per_s']:.0f} img/s")

    else:
        bar = None
        last = [0.0]

        def progress(step: int, s: dict) -> None:
            if time.monotonic() - last[0] > 10 and main_rank:
                last[0] = time.monotonic()
                print(
                    f"step {step}/{cfg.max_steps} loss {s['loss']:.4f} lr {s['lr']:.2e} {s['img_per_s']:.0f} img/s",
                    flush=True,
                )

    clean = False  # every process ended the run at the same point (see distributed.shutdown)
    try:
        best = train(cfg, args.out, resume=not args.fresh, progress=progress)
        clean = True
    except (DataError, CheckpointError) as e:  # a source, or an init_from file, that cannot be used
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        clean = True
        if main_rank:
            print(f"{e}; run the same command to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step
        if main_rank:
            print(f"interrupted; {args.out / 'state.pt'} holds the last saved state, if any", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.stop()
        distributed.shutdown(clean)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, only the main process reports
        print(json.dumps(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
