"""The seed paper's CIFAR-10 table, reproduced with our engines trained for 32x32.

    python -m benchmarks.seed_table [--cifar ../shared/data/cifar10] [--out benchmarks/results]

All 10,000 CIFAR-10 test images (32x32; gray ones kept, as in the paper), reduced to their
lightness and coloured at full size by the 32x32 engines ``engines/weights/cifar10-*.pt`` (recipes
``training/recipes/cifar-*.toml``, trained on the train split only). Results are rounded to 8-bit
sRGB, as a saved image would be. For each row:
- AuC (seed protocol): the fraction of pixels whose predicted sRGB colour lies within Euclidean
  distance t (8-bit units) of the true one, for t = 0..150, averaged, x100 (``RgbErrorCurve``);
- classifier accuracy: top-1 of our CIFAR-10 ResNet-18 (``engines/weights/classifier-cifar10.pt``,
  trained here on the colour train split) on the coloured test images, against the true labels;
- beside them, Zhang et al.'s ab AuC (plain and rebalanced with the CIFAR train prior) and colourfulness.
The paper's figures are printed beside ours. Writes ``seed_table.md`` and ``seed_samples.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks import ROOT, current_commit
from benchmarks.quality import gallery
from engines import color
from engines.files import write_text
from engines.metrics import AbErrorCurve, RgbErrorCurve, colourfulness, rebalance_weights
from engines.models import resnet
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend
from training.data import class_labels, load_source
from training.tasks import chroma_prior

WEIGHTS = ROOT / "engines" / "weights"
# The seed paper's CIFAR-10 test figures: (AuC, classifier accuracy).
PAPER = {
    "gray": (80.33, 22.19),
    "regression": (98.37, 67.75),  # their L2 regression
    "classification": (98.28, 66.6),
    "gan": (97.54, 64.07),  # their better GAN (WGAN; DCGAN: 97.26, 61.24)
    "ground truth": (100.0, 77.76),
}


def _predictions(truth: torch.Tensor, lab: torch.Tensor) -> dict[str, torch.Tensor]:
    """sRGB of every prediction: all-gray, the three CIFAR-10 engines, and the truth itself."""
    predictions = {"gray": color.lightness_to_rgb_gray(lab[:, :1])}
    for family in ("regression", "classification", "gan"):
        c = load_colorizer("custom", select_backend("cpu"), weights=WEIGHTS / f"cifar10-{family}.pt")
        out = torch.empty_like(truth)
        for i in range(0, len(truth), 500):
            ab = c.predict_ab(lab[i : i + 500, :1])
            out[i : i + 500] = color.lab_to_rgb_keep_lightness(lab[i : i + 500, :1], ab)
        predictions[family] = out
    predictions["ground truth"] = truth
    return predictions


def _scores(pred: torch.Tensor, truth: torch.Tensor, lab: torch.Tensor, weights, clf, labels) -> tuple:
    """``(RGB AuC, classifier accuracy %, ab AuC, ab AuC rebalanced, colourfulness)`` of one prediction."""
    pred = (pred * 255).round() / 255  # what an 8-bit file would hold
    rgb_curve, ab_curve = RgbErrorCurve(), AbErrorCurve(weights)
    rgb_curve.update(pred, truth)
    ab_curve.update(color.rgb_to_lab(pred)[:, 1:], lab[:, 1:])
    with torch.inference_mode():
        hits = sum(
            int((clf(pred[i : i + 1000]).argmax(1) == labels[i : i + 1000]).sum()) for i in range(0, len(pred), 1000)
        )
    return (
        rgb_curve.auc(),
        100 * hits / len(pred),
        ab_curve.auc(),
        ab_curve.auc_rebalanced(),
        float(colourfulness(pred).mean()),
    )


def _table(rows: list[tuple], n_images: int, clf_params: int) -> list[str]:
    lines = [
        (
            f"CIFAR-10 test split, all {n_images} images at 32x32, coloured from their lightness; commit "
            f"{current_commit()}. Classifier: our ResNet-18 ({clf_params / 1e6:.2f} M "
            f"parameters), trained on the colour train split."
        ),
        "",
        (
            "| prediction | AuC, seed protocol (paper) | AuC, ours | classifier accuracy % (paper) | ours "
            "| ab AuC | ab AuC rebal. | colourfulness |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, auc, acc, ab_auc, ab_rebal, colourful in rows:
        paper_auc, paper_acc = PAPER[key]
        lines.append(
            f"| {key} | {paper_auc:.2f} | {auc:.2f} | {paper_acc:.2f} | {acc:.2f} | {ab_auc:.2f} "
            f"| {ab_rebal:.2f} | {colourful:.1f} |"
        )
    lines += [
        "",
        (
            "Paper's GAN row is its WGAN (its DCGAN: AuC 97.26, accuracy 61.24); ours is a least-squares "
            "pix2pix GAN. Their classifier and ours differ, so accuracies compare through the gap to each one's "
            "ground-truth row."
        ),
    ]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", type=Path, default=ROOT.parent / "shared" / "data" / "cifar10")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--cache-dir", type=Path, default=Path("~/.cache/colorize/data").expanduser())
    args = p.parse_args()
    torch.set_num_threads(2)

    test = load_source(args.cifar / "cifar10-test.tar.gz", 32, args.cache_dir, keep_gray=True)
    train = load_source(args.cifar / "cifar10-train.tar.gz", 32, args.cache_dir)
    weights = rebalance_weights(chroma_prior([train.rgb_u8]), lam=0.0)
    clf_file = resnet.load(WEIGHTS / "classifier-cifar10.pt")
    clf = clf_file.build()
    labels = torch.from_numpy(class_labels(test.names, clf_file.classes))
    truth = torch.from_numpy(test.rgb_u8).permute(0, 3, 1, 2).float() / 255
    lab = color.rgb_to_lab(truth)

    predictions = _predictions(truth, lab)
    rows = []
    for key, pred in predictions.items():
        rows.append((key, *_scores(pred, truth, lab, weights, clf, labels)))
        print(rows[-1], flush=True)
    lines = _table(rows, len(truth), sum(v.numel() for v in clf_file.state_dict.values()))
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "seed_table.md", "\n".join(lines) + "\n")
    # Samples: 12 test images evenly spaced through the set (all ten classes), a rule fixed before looking.
    picks = [str(i) for i in range(0, len(truth), len(truth) // 12)][:12]
    to_np = {k: {i: v[int(i)].permute(1, 2, 0).numpy() for i in picks} for k, v in predictions.items()}
    gallery(picks, to_np, args.out / "seed_samples.png", height=96)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
