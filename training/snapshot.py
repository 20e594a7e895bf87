"""Export a run's latest weights as an engine, beside the best-validated ``engine.pt`` the loop keeps.

    python -m training.snapshot RUN_DIR --out latest.pt

The loop's validation uses small centre crops; which step colours real photos best is then chosen
on photos (``benchmarks.quality`` on the tuning split), so the latest weights must be exportable too.
The architecture, colour space and family state (e.g. ab bin centres) come from the run's
``engine.pt``: they are fixed for a run.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from engines.models import checkpoint


def snapshot(run_dir: Path, out: Path) -> checkpoint.EngineCheckpoint:
    template = checkpoint.load(run_dir / "engine.pt")
    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    step = int(state["step"])
    recipe = state["config"]
    averaged = "ema" in state["task"]  # a run with ema_decay: its average is what it validates and ships
    ckpt = replace(
        template,
        state_dict=state["task"]["ema" if averaged else "model"],
        trained_on={"recipe": recipe, "step": step, "images_seen": step * recipe["batch_size"]},
        metrics={
            "note": "latest weights of the run (its moving average when it keeps one), not the best validated ones",
            "step": step,
            "averaged": averaged,
        },
    )
    checkpoint.save(ckpt, out, half=True)
    return ckpt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.snapshot", description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    ckpt = snapshot(args.run_dir, args.out)
    print(f"{args.out}: step {ckpt.trained_on['step']}")


if __name__ == "__main__":
    main()
