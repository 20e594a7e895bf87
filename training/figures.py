"""Pictures of a run, written as it goes: ``curves.png`` (losses and held-out figures against step) and
``samples/step-NNNNNN.png`` (gray input, prediction, truth for the same validation images each time;
step 0 is the untrained or warm-started model, so the first and last grids are a before/after pair)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from engines import color
from engines.files import atomic_path

# Scalars logged per validation that are worth a curve, by panel.
_LOSS_KEYS = ("loss", "recon", "critic_loss", "g_adv")
_VAL_KEYS = (("auc", "gray_auc"), ("auc_rebal", "gray_auc_rebal"), ("colourfulness", "colourfulness_true"))


def _write_png(path: Path, rgb_u8: np.ndarray) -> None:
    """Atomic write, so a run killed mid-write never leaves half a PNG."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {tmp}")


def sample_grid(task, rgb: torch.Tensor, scale: int = 2) -> np.ndarray:
    """Three rows (gray, predicted, true) of ``rgb (N, 3, S, S)`` in [0, 1], each image enlarged ``scale`` times."""
    lab = color.rgb_to_lab(rgb)
    l = lab[:, :1]
    pred = color.lab_to_rgb_keep_lightness(l, task.predict_ab(l))
    gray = color.lightness_to_rgb_gray(l)
    rows = [torch.cat(list(x), dim=2) for x in (gray, pred, rgb)]  # each (3, S, N*S)
    grid = torch.cat(rows, dim=1).clamp(0, 1)
    out = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return cv2.resize(out, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def write_samples(task, rgb: torch.Tensor, out_dir: Path, step: int) -> Path:
    path = out_dir / "samples" / f"step-{step:06d}.png"
    _write_png(path, sample_grid(task, rgb))
    return path


def write_curves(log_path: Path, out_path: Path) -> None:
    """Plot every line of ``log.jsonl`` (one per validation): training losses and held-out figures."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for key in _LOSS_KEYS:
        if any(key in r for r in rows):
            axes[0].plot(steps, [r.get(key, np.nan) for r in rows], label=key)
    axes[0].set_title("training loss (last batch)")
    axes[0].set_yscale("log")
    for ax, (key, ref) in zip(axes[1:], _VAL_KEYS):
        ax.plot(steps, [r[key] for r in rows], marker=".", label=key)
        ax.plot(steps, [r[ref] for r in rows], linestyle="--", label=ref)
        ax.set_title(f"held-out {key}")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
