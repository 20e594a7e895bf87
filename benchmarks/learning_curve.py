"""Learning curve: a run's snapshots scored on real photos against images seen.

    python -m benchmarks.learning_curve RUN/snapshots/*.pt [--start-engine engines/weights/classification.pt]
        [--series NAME BRANCH/snapshots/*.pt ...] [--photos ../shared/data/photos-dev] [--start 0]
        [--limit 100] [--out benchmarks/results]

Each snapshot (``keep_snapshots = true`` in a recipe writes one per validation) colours the photos
through the CLI's pipeline, as ``benchmarks.quality`` does, and is scored beside an all-gray
prediction: plain and rebalanced AuC minus gray's, colourfulness over the originals', mean a* on
truly green pixels and false colour on truly neutral ones (``engines.metrics.ColourFidelity``).
The x axis is the images the run has seen (its ``trained_on.images_seen``); ``--start-engine``, the
engine the run was warm-started from, is the point at 0. ``--series NAME FILE...`` (repeatable) draws another run or branch beside it, on
the same x axis (a branch's snapshots count the images of the run it branched from).
``--images-before N``: the images the start engine had already seen (a campaign continued across
machines by warm starts, whose step count starts again at each): added to every point, so that the
axis counts the whole campaign.

By default the photos are the tuning split (0-99 by sorted name): the curve is for choosing between
designs and steps, so it must not be drawn on the photos the project reports (100-199, see
``benchmarks.quality``). Classification snapshots are decoded with the shipped engine's decoding
(``--temperature``, ``--correction``) so that points differ by their weights only.
Writes ``learning_curve.md`` and ``learning_curve.png`` under ``--out``, and keeps each snapshot's
scores in ``learning_curve-scores.json`` there (or in ``--scores``: one file can serve every curve), keyed by the file's content and the photos and
decoding, so a long run's curve is redrawn by scoring only its new snapshots (``--rescore``
ignores them, e.g. after a change to the scoring).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
from pathlib import Path

import torch

from benchmarks import ROOT, current_commit
from benchmarks.quality import evaluate, gray_of, load_photos, originals_colourfulness
from engines.evaluation.scoring import training_prior
from engines.files import atomic_path, write_text
from engines.metrics import rebalance_weights
from engines.models import checkpoint
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend


def images_seen(ckpt: checkpoint.EngineCheckpoint) -> int:
    return int((ckpt.trained_on or {}).get("images_seen", 0))


def score(path: Path, photos: dict, weights: torch.Tensor, options: dict, backend) -> dict:
    ckpt = checkpoint.load(path)
    decode = options if ckpt.family == "classification" else {}
    c = load_colorizer("custom", backend, weights=path, **decode)
    r, _ = evaluate(c.colorize, photos, weights)
    return {**r, "family": ckpt.family}


# Part of every kept score's key: changed whenever the pipeline or a metric changes what a score means, so
# that older kept scores are not mixed with new ones. "v2" (session 16): frames stretched to the network's
# shape instead of padded, and false colour as the share of truly neutral pixels coloured strongly.
SCORING = "v2"


def score_key(path: Path, photos_dir: Path, start: int, limit: int, options: dict) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:20]
    t, b = options["temperature"], options["correction"]
    return f"{SCORING} {digest} {photos_dir.name} {start}+{limit} T{t:g} B{b:g}"


def point(path: Path, is_start: bool, kept: dict, photos: dict, weights, options: dict, backend, args) -> dict:
    """One snapshot's point: its scores (from ``kept`` when scored before, else scored and kept there)
    and the images seen (0 for the start engine)."""
    key = score_key(path, args.photos, args.start, args.limit, options)
    if key not in kept:
        kept[key] = {
            k: v if isinstance(v, str) else float(v) for k, v in score(path, photos, weights, options, backend).items()
        }
    n = 0 if is_start else images_seen(checkpoint.load(path))
    return {"images": args.images_before + n, "name": path.name, **kept[key]}


def plot(series: dict[str, list[dict]], gray: dict, true_colourful: float, path: Path, title: str) -> None:
    """One panel per figure, one line per series (``{name: points}``), with the issue's targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [
        ("AuC minus gray", lambda p: p["auc"] - gray["auc"], 1.0),
        ("rebalanced AuC minus gray", lambda p: p["auc_rebal"] - gray["auc_rebal"], 6.0),
        ("colourfulness / originals'", lambda p: p["colourfulness"] / true_colourful, 0.8),
        ("mean a* on truly green pixels", lambda p: p["green_a"], -8.0),
    ]
    for ax, (label, y, target) in zip(axes, panels):
        for name, points in series.items():
            ax.plot([p["images"] / 1e6 for p in points], [y(p) for p in points], "o-", ms=4, label=name)
        ax.axhline(target, color="tab:green", ls="--", lw=1, label="target")
        if label.startswith(("AuC", "rebal")):
            ax.axhline(0, color="gray", lw=1)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("images seen (millions)")
        ax.grid(alpha=0.3)
    # One legend under the panels: long series names inside each panel hid their points.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snapshots", nargs="+", type=Path)
    p.add_argument("--start-engine", type=Path, default=None, help="the engine the run started from (point at 0)")
    p.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos-dev")
    p.add_argument("--start", type=int, default=0, help="first photo (sorted by name); 0-99 are for tuning")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.5, help="classification decoding (the shipped engine's)")
    p.add_argument("--correction", type=float, default=0.45, help="classification decoding (the shipped engine's)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument(
        "--images-before", type=int, default=0, help="images the start engine had seen (added to every point)"
    )
    p.add_argument("--scores", type=Path, help="the kept scores (default: learning_curve-scores.json under --out)")
    p.add_argument("--rescore", action="store_true", help="score every snapshot again, ignoring kept scores")
    p.add_argument("--name", default="run", help="the positional snapshots' name in the plot")
    p.add_argument(
        "--series", nargs="+", action="append", default=[], metavar=("NAME", "FILE"), help="another run or branch"
    )
    return p


def main() -> None:
    p = _parser()
    args = p.parse_args()
    if any(len(group) < 2 for group in args.series):
        p.error("--series takes a name and at least one snapshot")

    torch.set_num_threads(1)
    photos = load_photos(args.photos, args.start, args.limit)
    weights = rebalance_weights(training_prior(), lam=0.0)
    backend = select_backend("cpu")
    options = {"temperature": args.temperature, "correction": args.correction}
    gray, _ = evaluate(gray_of, photos, weights)
    true_colourful = originals_colourfulness(photos)
    kept_path = args.scores or args.out / "learning_curve-scores.json"
    kept = {} if args.rescore or not kept_path.exists() else json.loads(kept_path.read_text())
    start = [args.start_engine] if args.start_engine else []
    series = {}
    for name, files in [(args.name, args.snapshots), *((g[0], [Path(f) for f in g[1:]]) for g in args.series)]:
        # A snapshot named twice (two overlapping shell globs) must not draw its point twice.
        snapshots = sorted({path.resolve(): path for path in files}.values())
        points = [
            point(path, path is args.start_engine, kept, photos, weights, options, backend, args)
            for path in start + snapshots
        ]
        for q in points:
            print(f"{name} {q['name']}: {q['images']} images, AuC {q['auc'] - gray['auc']:+.2f}, ", end="")
            print(f"rebal. {q['auc_rebal'] - gray['auc_rebal']:+.2f}", flush=True)
        series[name] = sorted(points, key=lambda q: q["images"])
        start = []  # the start engine is drawn once, in the first series

    seen = (
        f"images seen ({args.images_before:,} before the start engine)"
        if args.images_before
        else "images seen in the run"
    )
    photos_label = f"photos {args.start}-{args.start + len(photos) - 1} of `{args.photos.name}`"
    lines = [
        "# Learning curve",
        "",
        (
            f"{photos_label} ({'the tuning split' if args.start == 0 else 'not the tuning split'}), coloured from "
            f"their lightness; classification decoded at T {args.temperature:g}, correction {args.correction:g}. "
            f"All-gray: AuC {gray['auc']:.2f}, rebalanced {gray['auc_rebal']:.2f}; originals' colourfulness "
            f"{true_colourful:.1f}, mean a* on their green pixels {gray['green_a_true']:.1f}. Machine: "
            f"{platform.machine()} CPU, torch {torch.__version__}, commit {current_commit()}. Command: "
            "`python -m benchmarks.learning_curve " + f"{args.start_engine or args.snapshots[0]} ..." + "`."
        ),
        "",
        (
            f"| series | weights | {seen} | AuC - gray | rebal. AuC - gray | colourfulness / originals' "
            "| mean a* on green pixels | truly neutral pixels given chroma > 25 (%) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, points in series.items():
        for q in points:
            false_colour = "n/a" if math.isnan(q["false_colour"]) else f"{q['false_colour']:.1f}"
            lines.append(
                f"| {name} | {q['name']} | {q['images']:,} | {q['auc'] - gray['auc']:+.2f} "
                f"| {q['auc_rebal'] - gray['auc_rebal']:+.2f} | {q['colourfulness'] / true_colourful:.2f} "
                f"| {q['green_a']:.1f} | {false_colour} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(kept_path, json.dumps(kept, indent=1, sort_keys=True) + "\n")
    write_text(args.out / "learning_curve.md", "\n".join(lines) + "\n")
    plot(series, gray, true_colourful, args.out / "learning_curve.png", f"Learning curve on {photos_label}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
