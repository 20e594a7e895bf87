"""Held-out colour quality of engines on real photos, beside an all-gray prediction.

    python -m benchmarks.quality [--photos ../shared/data/photos-dev] [--engine regression ...]
        [--weights run/engine.pt ...] [--working-sizes 96 128 ...] [--out benchmarks/results]

The photos are split by sorted name: 0-99 for choosing settings (working size, soup mix), 100-199
(the default) for reporting. Each photo is reduced to its lightness, coloured by the engine through the same pipeline as the CLI
(working-size chroma upsampled onto full-resolution L) and compared with the original:
- AuC: area under the cumulative ab-error curve, thresholds 0..150 (Zhang et al. 2016), pooled over
  all pixels; "rebal." weights each pixel by the inverse training-set prior of its true ab bin
  (lambda 0), the shipped prior of ``colorize eval``;
- PSNR (RGB), CIEDE2000, mean over photos;
- colourfulness (Hasler and Suesstrunk 2003), mean over photos, beside the originals' mean;
- mean |dL|: CIELAB lightness difference between output and input, after 8-bit rounding;
- realism probe (``engines.evaluation.scoring.RealismProbe``) with the shipped Tiny ImageNet classifier: how
  often its top-1 class on the result equals its top-1 on the original, and the Frechet distance
  between results' and originals' pooled features (100 photos, 256 features: a rank-deficient
  covariance, so compare rows with each other only).
``--record`` stores each shipped engine's figures in its weights file (``colorize models`` shows them).
Writes ``quality.md`` (table) and ``gallery.jpg`` (gray | each engine | original; JPEG so that the README's
picture stays a few hundred KB) under --out; the gallery shows every 25th photo of the sorted folder, a rule
fixed before looking at any result.
"""

from __future__ import annotations

import argparse
import platform
import zlib
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from benchmarks import ROOT, current_commit
from engines import color
from engines.evaluation.scoring import DEFAULT_CLASSIFIER, RealismProbe, realism_networks, training_prior
from engines.files import write_text
from engines.media.formats import IMAGE_SUFFIXES
from engines.metrics import AbErrorCurve, ColourFidelity, ciede2000, colourfulness, psnr, rebalance_weights
from engines.models import checkpoint
from engines.models.registry import ENGINES, get_spec
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend


def load_photos(folder: Path, start: int, limit: int) -> dict[str, np.ndarray]:
    photos = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    paths = photos[start : start + limit]
    if not paths:
        raise SystemExit(f"no photos ({', '.join(IMAGE_SUFFIXES)}) in {folder} from number {start}")
    return {p.stem: cv2.imread(str(p))[..., ::-1].astype(np.float32) / 255 for p in paths}


def to_chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def photos_colourfulness(photos: dict[str, np.ndarray]) -> dict[str, float]:
    """Each photo's own colourfulness."""
    return {name: float(colourfulness(to_chw(x))) for name, x in photos.items()}


def originals_colourfulness(photos: dict[str, np.ndarray]) -> float:
    """The photos' own mean colourfulness, what an engine's is measured against."""
    return float(np.mean(list(photos_colourfulness(photos).values())))


class PhotoParts(NamedTuple):
    """One coloured photo's share of ``evaluate``'s pooled figures: the curves and fidelity counts of a set
    are its photos' merged, its colourfulness the mean of theirs."""

    curve: AbErrorCurve
    fidelity: ColourFidelity
    colourfulness: float


def evaluate(
    colorize,
    photos: dict[str, np.ndarray],
    weights: torch.Tensor,
    inputs: dict[str, np.ndarray] | None = None,
    parts: dict[str, PhotoParts] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Each photo coloured (from ``inputs[name]`` when given, e.g. a degraded gray; else from itself) and
    scored against the photo. ``parts``, when given, is filled with each photo's ``PhotoParts``."""
    curve, fidelity = AbErrorCurve(weights), ColourFidelity()
    probe = RealismProbe(realism_networks(DEFAULT_CLASSIFIER, None))
    colourful, dl, psnrs, de, outputs = [], [], [], [], {}
    for name, rgb in photos.items():
        out = colorize(rgb if inputs is None else inputs[name])
        out = np.round(out * 255) / 255  # what an 8-bit file would hold
        lab_true = color.rgb_to_lab(to_chw(rgb).double())
        lab_pred = color.rgb_to_lab(to_chw(out).double())
        part = PhotoParts(AbErrorCurve(weights), ColourFidelity(), float(colourfulness(to_chw(out))))
        part.curve.update(lab_pred[1:], lab_true[1:])
        part.fidelity.update(lab_pred[1:], lab_true[1:])
        curve.merge(part.curve)
        fidelity.merge(part.fidelity)
        colourful.append(part.colourfulness)
        if parts is not None:
            parts[name] = part
        dl.append(float((lab_pred[0] - lab_true[0]).abs().mean()))
        psnrs.append(float(psnr(to_chw(out), to_chw(rgb))))
        de.append(float(ciede2000(lab_pred, lab_true).mean()))
        probe.add(name, out, rgb)
        outputs[name] = out
    return {
        "auc": curve.auc(),
        "auc_rebal": curve.auc_rebalanced(),
        "colourfulness": float(np.mean(colourful)),
        "green_a": fidelity.green_a(),
        "green_a_true": fidelity.green_a_true(),
        "false_colour": fidelity.false_colour_share(),
        "dL": float(np.mean(dl)),
        "psnr": float(np.mean(psnrs)),
        "ciede2000": float(np.mean(de)),
        **{k.split("[")[0]: v for k, v in probe.summary().items()},
    }, outputs


def gray_of(rgb: np.ndarray) -> np.ndarray:
    l = color.rgb_to_lightness(to_chw(rgb))
    return color.lightness_to_rgb_gray(l).permute(1, 2, 0).numpy()


def old_print(rgb: np.ndarray, name: str) -> np.ndarray:
    """The photo's gray as a worn print or scan would give it (``--degrade``): a darker, flatter tone curve,
    soft focus, grain and JPEG at quality 40, the same for a given photo name every time. The engines are
    scored on colouring this against the clean original's colour. JPEG is never applied in training
    (``training.degrade``), so the set is not only what a degrade-trained engine has seen."""
    x = color.rgb_to_lightness(to_chw(rgb)).squeeze(0).numpy() / 100
    x = x**1.25
    x = x.mean() + (x - x.mean()) * 0.85
    x = cv2.GaussianBlur(x, (0, 0), sigmaX=1.2)
    x = x + np.random.default_rng(zlib.crc32(name.encode())).normal(0, 0.03, x.shape).astype(np.float32)
    gray = color.lightness_to_rgb_gray(torch.from_numpy(np.clip(x, 0, 1) * 100)[None])[0].numpy()  # R = G = B
    ok, jpeg = cv2.imencode(".jpg", np.round(gray * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    return np.repeat(cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)[..., None], 3, axis=2).astype(np.float32) / 255


def gallery(rows: list[str], columns: dict[str, dict[str, np.ndarray]], path: Path, height: int = 160) -> None:
    tiles = []
    for name in rows:
        row = []
        for col in columns.values():
            img = col[name]
            w = round(img.shape[1] * height / img.shape[0])
            row.append(cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA))
            row.append(np.ones((height, 4, 3), np.float32))
        tiles.append(np.concatenate(row[:-1], axis=1))
    width = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0)), constant_values=1) for t in tiles]
    header = np.full((28, width, 3), 255, np.uint8)  # putText draws on 8-bit images only
    x = 0
    for label in columns:
        cv2.putText(header, label, (x + 4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        x += round(tiles[0].shape[1] / len(columns))
    img = np.concatenate([header.astype(np.float32) / 255, *tiles])
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix.lower() in (".jpg", ".jpeg") else []
    cv2.imwrite(str(path), np.round(img[..., ::-1] * 255).astype(np.uint8), params)


def record(results: dict[str, dict], held_out: str, true_colourful: float) -> None:
    """Write the figures of each shipped engine, run as shipped, into its weights file."""
    gray = results["all-gray prediction"]
    for name in ENGINES:
        path = get_spec(name).weights_path()
        ckpt = checkpoint.load(path)
        r = results.get(f"{name} @ {ckpt.working_size}")
        if r is None:
            continue
        ckpt.metrics = {
            "held_out_set": f"{held_out}, working size {ckpt.working_size}",
            **{k: round(r[k], 2) for k in ("auc", "auc_rebal", "psnr", "ciede2000", "colourfulness")},
            **{f"gray_{k}": round(gray[k], 2) for k in ("auc", "auc_rebal", "psnr", "ciede2000")},
            "colourfulness_true": round(true_colourful, 1),
            "lightness_error": round(r["dL"], 2),
            "green_a": round(r["green_a"], 1),
            "green_a_true": round(r["green_a_true"], 1),
            "false_colour_percent": round(r["false_colour"], 1),
        }
        checkpoint.save(ckpt, path, half=True)
        print(f"recorded in {path}")


def weight_labels(paths: list[Path]) -> list[str]:
    """Each weights file's row label: its name, or the last three parts of its path where two share a
    name (two runs' snapshots of the same step), so that each gets its own row."""
    stems = [w.stem for w in paths]
    return [w.stem if stems.count(w.stem) == 1 else "/".join(w.with_suffix("").parts[-3:]) for w in paths]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "data" / "photos-dev")
    p.add_argument("--start", type=int, default=100, help="first photo (sorted by name); 0-99 are for tuning")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--engine", nargs="*", default=list(ENGINES))
    p.add_argument("--weights", nargs="*", type=Path, default=[], help="extra checkpoints to evaluate")
    p.add_argument("--working-sizes", nargs="*", type=int, default=[], help="default: each engine's own")
    p.add_argument(
        "--temperatures", nargs="*", type=float, default=[], help="classification engines: annealed-mean temperatures"
    )
    p.add_argument(
        "--corrections", nargs="*", type=float, default=[], help="classification engines: rebalancing corrections"
    )
    p.add_argument(
        "--saturations", nargs="*", type=float, default=[], help="scales of the predicted chroma (as --saturation)"
    )
    p.add_argument(
        "--degrade",
        action="store_true",
        help="colour each photo from a worn print's gray (quality.old_print) instead of its own",
    )
    p.add_argument("--gallery-every", type=int, default=25, help="gallery: every Nth photo of the sorted folder")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument(
        "--record",
        action="store_true",
        help="store each shipped engine's figures (own working size and decoding) in its weights file, "
        "where `colorize models` shows them",
    )
    return p


def main() -> None:
    args = _parser().parse_args()
    if args.degrade and args.record:
        raise SystemExit("--record stores the clean photos' figures: run it without --degrade")

    torch.set_num_threads(2)
    photos = load_photos(args.photos, args.start, args.limit)
    weights = rebalance_weights(training_prior(), lam=0.0)
    gallery_names = list(photos)[:: args.gallery_every]
    backend = select_backend("cpu")

    results: dict[str, dict] = {}
    columns: dict[str, dict[str, np.ndarray]] = {"gray input": {n: gray_of(photos[n]) for n in gallery_names}}
    inputs = {n: old_print(rgb, n) for n, rgb in photos.items()} if args.degrade else None
    if inputs is not None:
        columns["gray input"] = {n: inputs[n] for n in gallery_names}
    results["all-gray prediction"], _ = evaluate(gray_of, photos, weights)
    candidates = [(e, None) for e in args.engine] + list(zip(weight_labels(args.weights), args.weights))
    for label, w in candidates:
        family = checkpoint.load(w if w is not None else get_spec(label).weights_path()).family
        temps = args.temperatures if family == "classification" and args.temperatures else [None]
        betas = args.corrections if family == "classification" and args.corrections else [None]
        sats = args.saturations or [None]
        settings = [
            (size, t, b, s) for size in args.working_sizes or [None] for t in temps for b in betas for s in sats
        ]
        for size, t, b, s in settings:
            options = {k: v for k, v in (("temperature", t), ("correction", b)) if v is not None}
            c = load_colorizer(label if w is None else "custom", backend, weights=w, working_size=size, **options)
            if s is not None:
                c.saturation = s
            key = f"{label} @ {c.working_size}" + "".join(f", {k[0].upper()} {v:g}" for k, v in options.items())
            key += f", S {s:g}" if s is not None else ""
            results[key], outs = evaluate(c.colorize, photos, weights, inputs)
            print(key, {k: round(v, 2) for k, v in results[key].items()}, flush=True)
            several = len(candidates) > 1 or len(settings) > 1
            columns[key if several and len(settings) > 1 else label] = {n: outs[n] for n in columns["gray input"]}
    columns["original"] = {n: photos[n] for n in columns["gray input"]}
    true_colourful = originals_colourfulness(photos)
    # photos-dev is BSDS500's train split; any other folder is described by its name alone.
    kind = "BSDS500 train" if args.photos.name == "photos-dev" else "a folder"
    if args.record:
        held_out = f"{kind} photos {args.start}-{args.start + len(photos) - 1} by sorted name ({args.photos.name})"
        record(results, held_out, true_colourful)

    args.out.mkdir(parents=True, exist_ok=True)
    commit = current_commit()
    lines = [
        (
            f"Held-out photos: {len(photos)} from `{args.photos.name}` ({kind}, never used in training; "
            f"photos {args.start} to {args.start + len(photos) - 1} by sorted name), "
            f"coloured from their lightness{' degraded as a worn print (--degrade)' if args.degrade else ''}. Machine: {platform.machine()} CPU, torch {torch.__version__}, "
            f"commit {commit}."
        ),
        "",
        (
            f"| prediction | AuC | AuC rebal. | PSNR | CIEDE2000 | colourfulness (originals: {true_colourful:.1f}) "
            f"| mean a* on truly green pixels (originals: {results['all-gray prediction']['green_a_true']:.1f}) | truly neutral pixels given chroma > 25 (%) "
            "| mean abs dL | classifier top-1 agreement with original (%) | Frechet distance, classifier features |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in results.items():
        lines.append(
            f"| {key} | {r['auc']:.2f} | {r['auc_rebal']:.2f} | {r['psnr']:.2f} | {r['ciede2000']:.2f} "
            f"| {r['colourfulness']:.1f} | {r['green_a']:.1f} | {r['false_colour']:.1f} | {r['dL']:.2f} | {r['top1_agreement']:.0f} | {r['frechet_distance']:.2f} |"
        )
    write_text(args.out / "quality.md", "\n".join(lines) + "\n")
    gallery(list(columns["gray input"]), columns, args.out / "gallery.jpg")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
