"""Comparing coloured results with their ground truth: the numbers behind ``colorize eval``.

Pairs files by relative path (extension ignored), scores each pair and pools the set:
- AuC of the cumulative ab-error curve (thresholds 0..150), plain and class-rebalanced with the
  training-set prior (lambda 0), pooled over all pixels (Zhang et al. 2016);
- PSNR (dB, RGB, peak 1) and SSIM (Gaussian window, RGB), mean over images;
- CIEDE2000, mean over images of the per-image mean;
- colourfulness (Hasler and Suesstrunk 2003) of results and truth, and its gap two ways: the mean
  over images of |CF(result) - CF(truth)|, and |mean CF(results) - mean CF(truths)|;
- lightness error: mean |L(result) - L(truth)|.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from engines import color
from engines.metrics import AbErrorCurve, ciede2000, colourfulness, psnr, rebalance_weights, ssim
from engines.photo_io import SUPPORTED_SUFFIXES, read_photo

PRIOR_FILE = "ab_prior.json"


class EvaluationError(ValueError):
    pass


@dataclass
class PairScores:
    name: str
    psnr: float
    ssim: float
    ciede2000: float
    colourfulness: float
    colourfulness_true: float
    lightness_error: float


def training_prior() -> torch.Tensor:
    """The ab-bin histogram of the shipped engines' training set (see ``engines/weights/ab_prior.json``)."""
    text = (resources.files("engines") / "weights" / PRIOR_FILE).read_text()
    return torch.tensor(json.loads(text)["counts"], dtype=torch.float64)


def _images(folder: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(folder).with_suffix("")): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
    }


def pair_files(pred: Path, truth: Path) -> list[tuple[str, Path, Path]]:
    """Files or folders -> ``(name, result, truth)`` pairs. Every result needs its truth."""
    if pred.is_file() and truth.is_file():
        return [(pred.stem, pred, truth)]
    if not (pred.is_dir() and truth.is_dir()):
        raise EvaluationError("give two files or two folders")
    results, truths = _images(pred), _images(truth)
    missing = sorted(set(results) - set(truths))
    if missing:
        raise EvaluationError(f"{len(missing)} result(s) have no ground truth, e.g. {missing[0]}")
    if not results:
        raise EvaluationError(f"no images in {pred}")
    return [(name, results[name], truths[name]) for name in results]


def _chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float64)).permute(2, 0, 1)


def evaluate_pairs(pairs: list[tuple[str, Path, Path]], prior: torch.Tensor) -> tuple[dict, list[PairScores]]:
    curve = AbErrorCurve(rebalance_weights(prior, lam=0.0))
    scores: list[PairScores] = []
    for name, pred_path, true_path in pairs:
        pred, true = _chw(read_photo(pred_path).rgb), _chw(read_photo(true_path).rgb)
        if pred.shape != true.shape:
            raise EvaluationError(
                f"{name}: sizes differ ({pred.shape[2]}x{pred.shape[1]} vs {true.shape[2]}x{true.shape[1]})"
            )
        lab_p, lab_t = color.rgb_to_lab(pred), color.rgb_to_lab(true)
        curve.update(lab_p[1:], lab_t[1:])
        scores.append(
            PairScores(
                name=name,
                psnr=float(psnr(pred, true)),
                ssim=float(ssim(pred[None], true[None])[0]),
                ciede2000=float(ciede2000(lab_p, lab_t).mean()),
                colourfulness=float(colourfulness(pred)),
                colourfulness_true=float(colourfulness(true)),
                lightness_error=float((lab_p[0] - lab_t[0]).abs().mean()),
            )
        )
    cf = np.array([s.colourfulness for s in scores])
    cf_true = np.array([s.colourfulness_true for s in scores])
    summary = {
        "images": len(scores),
        "auc": curve.auc(),
        "auc_rebalanced": curve.auc_rebalanced(),
        "psnr": float(np.mean([s.psnr for s in scores])),
        "ssim": float(np.mean([s.ssim for s in scores])),
        "ciede2000": float(np.mean([s.ciede2000 for s in scores])),
        "colourfulness": float(cf.mean()),
        "colourfulness_true": float(cf_true.mean()),
        "colourfulness_gap_per_image": float(np.abs(cf - cf_true).mean()),
        "colourfulness_gap_of_means": float(abs(cf.mean() - cf_true.mean())),
        "lightness_error": float(np.mean([s.lightness_error for s in scores])),
    }
    return summary, scores


def as_dicts(scores: list[PairScores]) -> list[dict]:
    return [asdict(s) for s in scores]
