"""Colorization quality metrics. Pure functions and small accumulators over torch tensors.

- ab-error AuC (Zhang et al. 2016): the fraction of pixels whose predicted ab lies within an L2
  distance t of the truth, swept over t = 0..150 and averaged (the normalised area under that
  cumulative curve), x100. Pooled over all pixels of a set. The class-rebalanced variant weights each
  pixel by the inverse prior probability of its true ab bin (lambda 0), as in the paper.
- Colourfulness (Hasler and Suesstrunk 2003) on 8-bit sRGB scale.
"""

from __future__ import annotations

import torch

AB_BIN = 10.0  # ab grid step (CIELAB units)
AB_RANGE = 110.0  # ab bins cover [-AB_RANGE, AB_RANGE)
AB_GRID = int(2 * AB_RANGE / AB_BIN)  # bins per axis: 22
AUC_MAX_THRESHOLD = 150


def ab_bin_index(ab: torch.Tensor) -> torch.Tensor:
    """ab ``(..., 2, H, W)`` -> flat bin index ``(..., H, W)`` on the 10-unit grid (22 x 22 bins)."""
    q = ((ab + AB_RANGE) / AB_BIN).floor().clamp(0, AB_GRID - 1).long()
    return q[..., 0, :, :] * AB_GRID + q[..., 1, :, :]


def ab_histogram(ab: torch.Tensor) -> torch.Tensor:
    """Counts of ab ``(..., 2, H, W)`` over the ``AB_GRID * AB_GRID`` bins (float64)."""
    return torch.bincount(ab_bin_index(ab).flatten(), minlength=AB_GRID * AB_GRID).double()


def rebalance_weights(prior: torch.Tensor, lam: float = 0.0, sigma_bins: float = 0.0) -> torch.Tensor:
    """Per-bin weights proportional to ``1 / ((1 - lam) * p_smoothed + lam / Q)``, with ``E_p[w] = 1``.

    ``prior`` is a histogram over the bins (any scale). ``lam = 0`` is the metric's pure inverse prior;
    training uses ``lam = 0.5`` and a Gaussian-smoothed prior (``sigma_bins = 0.5``: sigma 5 in ab
    units). Bins never seen get weight 0 when ``lam = 0`` (no pixel falls there anyway).
    """
    p = prior.double() / prior.sum()
    if sigma_bins > 0:
        p = _gaussian_smooth_2d(p.view(AB_GRID, AB_GRID), sigma_bins).flatten()
        p = p / p.sum()
    seen = p > 0
    q = int(seen.sum())
    denom = (1 - lam) * p + lam / q
    w = torch.where(seen, 1.0 / denom.clamp(min=1e-12), torch.zeros_like(p))
    return (w / (w * p).sum()).float()


def _gaussian_smooth_2d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma + 0.5))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = torch.nn.functional.conv2d(x[None, None], k.view(1, 1, 1, -1), padding=(0, r))
    x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1), padding=(r, 0))
    return x[0, 0]


class AbErrorCurve:
    """Accumulates per-pixel ab errors over a set, then gives the plain and rebalanced AuC."""

    def __init__(self, weights: torch.Tensor | None = None):
        self.weights = weights  # per-bin rebalancing weights (``rebalance_weights(prior, 0)``), or None
        self.plain = torch.zeros(AUC_MAX_THRESHOLD + 2, dtype=torch.float64)
        self.rebalanced = torch.zeros(AUC_MAX_THRESHOLD + 2, dtype=torch.float64)

    def update(self, ab_pred: torch.Tensor, ab_true: torch.Tensor) -> None:
        """ab ``(..., 2, H, W)`` in CIELAB units."""
        err = (ab_pred.double() - ab_true.double()).square().sum(-3).sqrt().flatten()
        # Error e counts as within threshold t when e <= t, so it lands in bucket ceil(e).
        bucket = err.ceil().clamp(max=AUC_MAX_THRESHOLD + 1).long()
        self.plain += torch.bincount(bucket, minlength=AUC_MAX_THRESHOLD + 2).double()
        if self.weights is not None:
            w = self.weights.double()[ab_bin_index(ab_true).flatten()]
            self.rebalanced += torch.bincount(bucket, weights=w, minlength=AUC_MAX_THRESHOLD + 2)

    @staticmethod
    def _auc(hist: torch.Tensor) -> float:
        total = hist.sum()
        if total <= 0:
            return float("nan")
        within = hist.cumsum(0)[: AUC_MAX_THRESHOLD + 1] / total  # fraction with error <= t, t = 0..150
        return float(within.mean() * 100)

    def auc(self) -> float:
        return self._auc(self.plain)

    def auc_rebalanced(self) -> float:
        return self._auc(self.rebalanced)


def colourfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler and Suesstrunk (2003) colourfulness of sRGB in [0, 1], ``(..., 3, H, W)`` -> ``(...)``.

    Computed on the 0-255 scale, as the paper and the colorization literature report it.
    """
    r, g, b = (rgb * 255).unbind(-3)
    rg = r - g
    yb = 0.5 * (r + g) - b
    std = (rg.flatten(-2).var(-1, unbiased=False) + yb.flatten(-2).var(-1, unbiased=False)).sqrt()
    mean = (rg.flatten(-2).mean(-1).square() + yb.flatten(-2).mean(-1).square()).sqrt()
    return std + 0.3 * mean
