"""Train the ResNet-18 classifiers that ``colorize eval`` measures with, from scratch.

    python -m training.classifier SOURCE [SOURCE ...] --size 32 --out DIR [--test SOURCE] [--export FILE]

A source is a tar shard or a folder laid out ``<split>/<class>/<image>`` (Tiny ImageNet, CIFAR-10 as
in ``../shared/data``): the class is the image's parent folder. Gray images are dropped from training
(the classifier is a judge of colour photos); ``--test`` sources keep them. The state is saved every
few minutes and at each validation, and a run started again with the same ``--out`` resumes exactly.
``DIR/classifier.pt`` is the best validated model; ``--export`` copies it at the end with its test
accuracy recorded.

This command is the one training loop (``training.loop``) with the classifier's task
(``training.tasks.ClassifierTask``): the same as ``python -m training`` on a recipe with
``family = "classifier"``, plus the test accuracies.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engines.models import resnet
from training.config import TrainConfig, from_dict
from training.data import class_labels, load_source
from training.loop import train_command
from training.tasks import accuracy


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.classifier", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("sources", type=Path, nargs="+")
    p.add_argument("--size", type=int, required=True, help="images are decoded at this size (square centre crop)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--test", type=Path, action="append", default=[], help="held-out labelled source, gray kept")
    p.add_argument("--export", type=Path, help="copy the best model here at the end, test accuracy recorded")
    p.add_argument("--widths", default="64,128,256,512")
    p.add_argument("--stem-stride", type=int, default=1)
    p.add_argument("--stem-pool", action="store_true")
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--min-crop-scale", type=float, default=0.6)
    p.add_argument("--val-fraction", type=float, default=0.04)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/colorize/data").expanduser())
    return p


def recipe_of(args: argparse.Namespace) -> TrainConfig:
    """The command's options as a ``family = "classifier"`` recipe; ``ValueError`` for a bad one."""
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        raise ValueError(f"--widths takes whole numbers separated by commas, not {args.widths!r}") from None
    if args.epochs <= 0:
        raise ValueError(f"--epochs must be above 0, not {args.epochs}")
    return from_dict(
        {
            "family": "classifier",
            "sources": [str(s) for s in args.sources],
            "source_sizes": [args.size] * len(args.sources),
            "crop_size": args.size,
            "widths": widths,
            "stem_stride": args.stem_stride,
            "stem_pool": args.stem_pool,
            "epochs": args.epochs,
            "batch_size": args.batch,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_steps": 500,  # at most a tenth of the run (ClassifierTask)
            "min_crop_scale": args.min_crop_scale,
            "val_fraction": args.val_fraction,
            "val_every": args.val_every,
            "checkpoint_minutes": 3.0,
            "threads": args.threads,
            "seed": args.seed,
            "cache_dir": str(args.cache_dir),
        }
    )


def _progress():
    """A line every 10 s, and one per validation."""
    last = [0.0]

    def show(step: int, s: dict) -> None:
        if "val_acc" in s:
            print(f"step {step}: validation accuracy {s['val_acc']:.2f}%", flush=True)
        elif time.monotonic() - last[0] > 10:
            last[0] = time.monotonic()
            print(f"step {step} loss {s['loss']:.3f} {s['img_per_s']:.0f} img/s", flush=True)

    return show


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = recipe_of(args)
        tests = [load_source(p, args.size, args.cache_dir, keep_gray=True) for p in args.test]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status, _ = train_command(cfg, args.out, _progress())
    if status:
        return status

    best_path = args.out / "classifier.pt"
    cf = resnet.load(best_path)
    metrics = dict(cf.metrics)
    best_model = cf.build()
    for src, t in zip(args.test, tests):
        labels = class_labels(t.names, cf.classes)
        known = labels >= 0
        metrics[f"test_acc:{src.name}"] = accuracy(best_model, t.rgb_u8[known], labels[known])
    cf.metrics = metrics
    resnet.save(cf, best_path)
    if args.export:
        resnet.save(cf, args.export)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
