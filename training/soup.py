"""Weight interpolation of two engines of one family and architecture (a two-ingredient "model soup",
Wortsman et al. 2022), with BatchNorm statistics re-estimated on training data afterwards.

    python -m training.soup A.pt B.pt --alpha 0.5 --recipe training/recipes/regression.toml --out soup.pt

``alpha`` 0 gives A, 1 gives B. Interpolating works when both engines share a training history (one
was started from a checkpoint of the other): their weights then lie in one basin and the soup's
behaviour moves smoothly between theirs, e.g. between an accurate but muted regression engine and a
vivid, class-rebalanced one. Averaged weights change the activations' statistics, so BatchNorm's
running means and variances are re-estimated on training batches before the engine is saved.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from engines import color
from engines.models import checkpoint, gan
from training.config import load_recipe
from training.data import BatchSampler, training_sets


def interpolate(
    a: checkpoint.EngineCheckpoint, b: checkpoint.EngineCheckpoint, alpha: float
) -> dict[str, torch.Tensor]:
    if a.family != b.family or a.arch != b.arch:
        raise ValueError("both engines must be of one family and architecture")
    out = {}
    for k, va in a.state_dict.items():
        vb = b.state_dict[k]
        out[k] = (1 - alpha) * va.float() + alpha * vb.float() if va.is_floating_point() else va
    return out


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor], color_space: str = "lab") -> None:
    """Re-estimate BatchNorm running statistics as the plain average over ``batches`` (sRGB crops),
    with the input the engine sees (its colour space's gray, plus a noise channel for a GAN)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    model.train()
    for rgb in batches:
        x = color.input_from_lightness(color.rgb_to_lab(rgb)[:, :1], color_space)
        if model.config.in_channels == 2:
            x = gan.with_noise(x, None)
        model(x)
    model.eval()


def soup(a_path: Path, b_path: Path, alpha: float, batches: list[torch.Tensor]) -> checkpoint.EngineCheckpoint:
    a, b = checkpoint.load(a_path), checkpoint.load(b_path)
    ckpt = checkpoint.EngineCheckpoint(
        family=a.family,
        arch=a.arch,
        state_dict=interpolate(a, b, alpha),
        color_space=a.color_space,
        working_size=a.working_size,
        trained_on={"soup": {"a": a.trained_on, "b": b.trained_on, "alpha": alpha, "bn_batches": len(batches)}},
        family_state=a.family_state,
    )
    model = ckpt.build_model()
    if batches:
        recalibrate_batchnorm(model, batches, a.color_space)
    ckpt.state_dict = model.state_dict()
    return ckpt


def training_batches(recipe: Path, n: int, seed: int = 123) -> list[torch.Tensor]:
    cfg = load_recipe(recipe)
    cache = Path(os.path.expanduser(cfg.cache_dir))
    sets = training_sets(cfg.sources, cfg.source_sizes, cfg.source_repeats, cfg.val_fraction, cache)[0]
    sampler = BatchSampler(sets, cfg.batch_size, cfg.crop_size, seed, cfg.min_crop_scale, cfg.crop_sizes)
    return [sampler.next_batch() for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--recipe", type=Path, required=True, help="training data for BatchNorm statistics")
    p.add_argument("--bn-batches", type=int, default=100)
    p.add_argument("--working-size", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        ckpt = soup(args.a, args.b, args.alpha, training_batches(args.recipe, args.bn_batches))
    except (OSError, ValueError, KeyError) as e:  # missing or mismatched engines, a bad recipe
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.working_size:
        ckpt.working_size = args.working_size
    checkpoint.save(ckpt, args.out, half=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
