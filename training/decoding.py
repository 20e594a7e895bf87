"""Record a classification engine's decoding defaults (annealed-mean temperature, rebalancing correction).

    python -m training.decoding ENGINE.pt --temperature 0.5 --correction 0.4 --out SHIPPED.pt

Both are chosen after training, on photos (``benchmarks.quality --start 0`` sweeps them on the tuning
split), and then travel with the engine so that ``colorize`` uses them unless told otherwise. An engine
trained before it recorded its rebalancing weights gets them from the shipped training prior
(``engines/weights/ab_prior.json``) and its recipe's ``rebalance_lambda``, as the training task does.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from engines.evaluation.scoring import training_prior
from engines.metrics import rebalance_weights
from engines.models import checkpoint, classification


def set_decoding(src: Path, out: Path, temperature: float, correction: float) -> checkpoint.EngineCheckpoint:
    ckpt = checkpoint.load(src)
    if ckpt.family != "classification":
        raise ValueError(f"{src}: a {ckpt.family} engine has no decoding to set")
    state = dict(ckpt.family_state)
    if "log_rebalance" not in state:
        lam = float(ckpt.trained_on.get("recipe", {}).get("rebalance_lambda", 0.0))
        if lam <= 0:
            raise ValueError(f"{src}: trained without class rebalancing; there is nothing to correct")
        weights = rebalance_weights(training_prior(), lam=lam, sigma_bins=0.5)
        state["log_rebalance"] = classification.log_rebalance_weights(state["ab_centres"].float(), weights)
    state.update(temperature=float(temperature), correction=float(correction))
    result = replace(ckpt, family_state=state)
    checkpoint.save(result, out, half=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m training.decoding", description=__doc__)
    p.add_argument("engine", type=Path)
    p.add_argument("--temperature", type=float, required=True)
    p.add_argument("--correction", type=float, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    set_decoding(args.engine, args.out, args.temperature, args.correction)
    print(f"{args.out}: temperature {args.temperature:g}, correction {args.correction:g}")


if __name__ == "__main__":
    main()
