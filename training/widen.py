"""A trained engine made wider without changing what it computes (Net2Net's "wider", Chen et al. 2016):

    python -m training.widen engines/weights/classification.pt --widths 32,64,256,512 --out wide.pt

then train on with ``init_from = "wide.pt"`` and the same ``widths`` in the recipe. Each layer's old
outputs take their old weights from the old inputs and zeros from the new channels; the new outputs
start from PyTorch's initialisation. The new channels therefore contribute nothing until training moves
their outgoing weights off zero, so the wider network starts exactly where the trained one was and can
grow capacity where a run is data-bound, instead of starting a larger network from nothing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from engines.models import checkpoint
from engines.models.unet import UNet, UNetConfig


def _input_segments(name: str, old: UNetConfig, new: UNetConfig) -> list[tuple[int, int]] | None:
    """Where a layer's input channels lie, as ``(old count, new count)`` segments in order: a decoder
    stage's first convolution reads the upsampled deeper features and then the skip (``UNet.forward``)."""
    parts = name.split(".")
    if parts[0] == "up" and parts[2] == "0" and parts[3] == "0":
        deep = len(old.widths) - 1 - int(parts[1])
        return [(old.widths[deep], new.widths[deep]), (old.widths[deep - 1], new.widths[deep - 1])]
    return None


def widen(engine: checkpoint.EngineCheckpoint, widths: tuple[int, ...], seed: int = 0) -> checkpoint.EngineCheckpoint:
    """The engine with ``widths`` (each at least the old one), computing the same function."""
    old = engine.arch
    if old.encoder != "plain":
        raise ValueError("only the plain encoder can be widened (a ResNet encoder's blocks add residuals)")
    if len(widths) != len(old.widths) or any(n < o for n, o in zip(widths, old.widths)):
        raise ValueError(
            f"widths must be {len(old.widths)} numbers, each at least {list(old.widths)}, got {list(widths)}"
        )
    new = replace(old, widths=tuple(widths))
    with torch.random.fork_rng():  # the new channels' initialisation, without touching the caller's generator
        torch.manual_seed(seed)
        fresh = UNet(new).state_dict()
    out = {}
    for name, value in engine.state_dict.items():
        target = fresh[name].clone()
        value = value.to(target.dtype)
        if value.ndim == 0:  # num_batches_tracked
            out[name] = value.clone()
            continue
        rows = value.shape[0]
        if value.ndim == 1:
            target[:rows] = value
        else:
            layer = name.rsplit(".", 1)[0]
            segments = _input_segments(layer, old, new) or [(value.shape[1], target.shape[1])]
            target[:rows] = 0  # old outputs: nothing from the new input channels
            src = dst = 0
            for n_old, n_new in segments:
                target[:rows, dst : dst + n_old] = value[:, src : src + n_old]
                src, dst = src + n_old, dst + n_new
        out[name] = target
    return replace(engine, arch=new, state_dict=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.widen", description=__doc__.split("\n\n")[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--widths", required=True, help="comma-separated, one per stage, e.g. 32,64,192,384")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
        wide = widen(checkpoint.load(args.engine), widths)
    except (ValueError, checkpoint.CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    checkpoint.save(wide, args.out, half=True)
    print(f"{args.out}: widths {list(wide.arch.widths)}, {sum(v.numel() for v in wide.state_dict.values()):,} numbers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
