"""Train the ResNet-18 classifiers that ``colorize eval`` measures with, from scratch.

    python -m training.classifier SOURCE [SOURCE ...] --size 32 --out DIR [--test SOURCE] [--export FILE]

A source is a tar shard or a folder laid out ``<split>/<class>/<image>`` (Tiny ImageNet, CIFAR-10 as
in ``../shared/data``): the class is the image's parent folder. Gray images are dropped from training
(the classifier is a judge of colour photos); ``--test`` sources keep them. The state is saved every
few minutes and at each validation, and a run started again with the same ``--out`` resumes exactly.
``DIR/classifier.pt`` is the best validated model; ``--export`` copies it at the end with its test
accuracy recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from engines.files import atomic_path
from engines.models import resnet
from training.data import BatchSampler, load_source, validation_mask


def class_of(name: str) -> str:
    return Path(name).parent.name


@torch.inference_mode()
def accuracy(model: resnet.ResNet, rgb_u8: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(rgb_u8), batch):
        x = torch.from_numpy(rgb_u8[i : i + batch]).permute(0, 3, 1, 2).float() / 255
        correct += int((model(x).argmax(1).numpy() == labels[i : i + batch]).sum())
    return 100.0 * correct / max(1, len(rgb_u8))


def main(argv: list[str] | None = None) -> int:
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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        sets = [load_source(p, args.size, args.cache_dir) for p in args.sources]
        tests = [load_source(p, args.size, args.cache_dir, keep_gray=True) for p in args.test]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = sorted({class_of(n) for s in sets for n in s.names})
    index = {c: i for i, c in enumerate(classes)}
    train_x, train_y, val_x, val_y = [], [], [], []
    for s in sets:
        labels = np.array([index[class_of(n)] for n in s.names])
        is_val = validation_mask(s.names, args.val_fraction)
        train_x.append(s.rgb_u8[~is_val])
        train_y.append(labels[~is_val])
        val_x.append(s.rgb_u8[is_val])
        val_y.append(labels[is_val])
    train_labels = torch.from_numpy(np.concatenate(train_y))
    val_x, val_y = np.concatenate(val_x), np.concatenate(val_y)

    config = resnet.ResNetConfig(
        num_classes=len(classes),
        widths=tuple(int(w) for w in args.widths.split(",")),
        stem_stride=args.stem_stride,
        stem_pool=args.stem_pool,
        image_size=args.size,
    )
    model = resnet.ResNet(config)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    sampler = BatchSampler(train_x, args.batch, args.size, args.seed, args.min_crop_scale)
    max_steps = int(args.epochs * len(sampler))
    warmup = min(500, max_steps // 10)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, max_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path, best_path = args.out / "state.pt", args.out / "classifier.pt"
    step, best = 0, -1.0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        sampler.load_state_dict(st["sampler"])
        torch.set_rng_state(st["torch_rng"])
        step, best = st["step"], st["best"]
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    recipe["sources"] = [str(s) for s in args.sources]
    recipe["test"] = [str(s) for s in args.test]

    def save_state() -> None:
        with atomic_path(state_path) as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                    "sampler": sampler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "best": best,
                },
                tmp,
            )

    t0, last_save, last_print, seen0 = time.monotonic(), time.monotonic(), 0.0, step
    while step < max_steps:
        model.train()
        x, idx = sampler.next_batch(with_index=True)
        loss = F.cross_entropy(model(x), train_labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        now = time.monotonic()
        if now - last_print > 10:
            last_print = now
            rate = (step - seen0) * args.batch / (now - t0)
            print(f"step {step}/{max_steps} loss {loss.item():.3f} {rate:.0f} img/s", flush=True)
        if step % args.val_every == 0 or step == max_steps:
            acc = accuracy(model, val_x, val_y)
            with open(args.out / "log.jsonl", "a") as f:
                f.write(
                    json.dumps({"step": step, "epoch": step / len(sampler), "loss": loss.item(), "val_acc": acc}) + "\n"
                )
            print(f"step {step}: validation accuracy {acc:.2f}%", flush=True)
            if acc > best:
                best = acc
                resnet.save(
                    resnet.ClassifierFile(config, classes, model.state_dict(), recipe, {"val_acc": acc, "step": step}),
                    best_path,
                )
            save_state()
            last_save = now
        elif now - last_save > 180:
            save_state()
            last_save = now
    save_state()

    cf = resnet.load(best_path)
    metrics = dict(cf.metrics)
    best_model = cf.build()
    for src, t in zip(args.test, tests):
        known = np.array([class_of(n) in index for n in t.names])
        labels = np.array([index.get(class_of(n), -1) for n in t.names])
        metrics[f"test_acc:{src.name}"] = accuracy(best_model, t.rgb_u8[known], labels[known])
    cf.metrics = metrics
    resnet.save(cf, best_path)
    if args.export:
        resnet.save(cf, args.export)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
