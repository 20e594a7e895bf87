"""A training recipe's validation images written out as PNG files: photos of the training data's own kind
(ImageNet content for the campaign) that no run of the recipe trains on, for choosing an engine's decoding
beside photos-dev 0-99 with ``python -m benchmarks.quality --photos DIR``.

    python -m benchmarks.holdout training/recipes/campaign-classification.toml --out DIR
        [--source-contains tiny-imagenet] [--every 5]

Each source is decoded as the run decodes it (its size, gray images dropped, the same cache) and split by
``training.data.validation_mask`` with the recipe's fraction, so the files are exactly images the run
holds out. Every ``--every``-th validation image of each source is kept (in the source's order); files are
named ``<source stem>-<index in the source>.png``, so the same recipe always gives the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from training.config import load_recipe
from training.data import load_source, validation_mask


def export(recipe: Path, out: Path, source_contains: str = "", every: int = 1) -> list[Path]:
    """Write the recipe's validation images of the sources whose path contains ``source_contains``."""
    cfg = load_recipe(recipe)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src, size in zip(cfg.sources, cfg.source_sizes):
        if source_contains not in src:
            continue
        images = load_source(Path(src), size, Path(cfg.cache_dir).expanduser())
        stem = Path(src).name.split(".")[0]
        for i in validation_mask(images.names, cfg.val_fraction).nonzero()[0][::every]:
            path = out / f"{stem}-{i:05d}.png"
            cv2.imwrite(str(path), images.rgb_u8[i][:, :, ::-1])
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--source-contains", default="", help="only sources whose path contains this")
    p.add_argument("--every", type=int, default=1, help="keep every Nth validation image of each source")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error("--every must be at least 1")
    written = export(args.recipe, args.out, args.source_contains, args.every)
    if not written:
        print(
            f"error: no validation images in the sources of {args.recipe} matching {args.source_contains!r}",
            file=sys.stderr,
        )
        return 2
    print(f"{len(written)} held-out images written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
