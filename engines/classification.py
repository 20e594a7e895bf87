"""Classification family (Zhang et al. 2016): ab quantised into in-gamut bins on a 10-unit grid.

Training targets are soft-encoded over the 5 nearest bins with a Gaussian (sigma 5); the loss is
class-rebalanced (see ``engines.metrics.rebalance_weights``). At inference the per-pixel distribution
is decoded to one ab by the annealed mean: the mean of ``softmax(logits / T)``. T = 1 is the plain mean
(desaturated, like regression); T -> 0 tends to the mode (vivid but blotchy); Zhang's 0.38 sits between.

Rebalancing correction: a loss that weighs each pixel by ``w(true bin)`` teaches the network the
distribution ``p(q) w(q)`` (normalised) instead of ``p(q)``, which over-predicts rare, saturated
colours. Subtracting ``beta * log w(q)`` from the logits before decoding undoes that (beta = 1: the
unweighted distribution; beta = 0: Zhang et al.'s decoding). Beta is a second dial beside T between
accuracy and vividness (logit adjustment, Menon et al. 2021); engines record ``log w`` per bin.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from engines.metrics import AB_BIN, AB_GRID, AB_RANGE, ab_bin_index

DEFAULT_TEMPERATURE = 0.38
DECODINGS = ("annealed", "mean", "argmax")


def bin_centres(prior: torch.Tensor) -> torch.Tensor:
    """The in-gamut bins (those the training data ever hit) as ab centres ``(Q, 2)``.

    ``prior`` is an ab histogram over the ``AB_GRID * AB_GRID`` grid of ``engines.metrics``.
    """
    idx = torch.nonzero(prior.flatten() > 0).flatten()
    a = idx // AB_GRID
    b = idx % AB_GRID
    return torch.stack((a, b), dim=1).float() * AB_BIN - AB_RANGE + AB_BIN / 2


def soft_encode(ab: torch.Tensor, centres: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """ab ``(N, 2, H, W)`` -> target distribution ``(N, Q, H, W)`` over the ``k`` nearest bins, Gaussian-weighted."""
    n, _, h, w = ab.shape
    pix = ab.permute(0, 2, 3, 1).reshape(-1, 2)  # (P, 2)
    d2 = torch.cdist(pix, centres).square()  # (P, Q)
    near_d2, near_idx = d2.topk(k, dim=1, largest=False)
    weights = torch.softmax(-near_d2 / (2 * sigma**2), dim=1)
    target = torch.zeros_like(d2).scatter_(1, near_idx, weights)
    return target.view(n, h, w, -1).permute(0, 3, 1, 2)


def log_rebalance_weights(centres: torch.Tensor, bin_weights: torch.Tensor) -> torch.Tensor:
    """``log w`` at each centre ``(Q,)``, from per-grid-bin training weights (``metrics.rebalance_weights``)."""
    return bin_weights[ab_bin_index(centres.T[None, :, :, None]).flatten()].clamp(min=1e-12).log().float()


def decode_distribution(
    logits: torch.Tensor,
    centres: torch.Tensor,
    method: str = "annealed",
    temperature: float = DEFAULT_TEMPERATURE,
    log_rebalance: torch.Tensor | None = None,
    correction: float = 0.0,
) -> torch.Tensor:
    """logits ``(N, Q, h, w)`` -> ab ``(N, 2, h, w)`` in CIELAB units."""
    if correction:
        if log_rebalance is None:
            raise ValueError("this engine records no rebalancing weights, so it cannot be corrected")
        logits = logits - correction * log_rebalance.to(logits.dtype).view(1, -1, 1, 1)
    if method == "argmax":
        return centres[logits.argmax(1)].permute(0, 3, 1, 2)
    t = 1.0 if method == "mean" else temperature
    if method not in DECODINGS or t <= 0:
        raise ValueError(f"decoding must be one of {', '.join(DECODINGS)} with a positive temperature")
    p = F.softmax(logits / t, dim=1)
    return torch.einsum("nqhw,qc->nchw", p, centres.to(p.dtype))


def decode(
    raw: torch.Tensor,
    family_state: dict,
    method: str = "annealed",
    temperature: float | None = None,
    correction: float | None = None,
) -> torch.Tensor:
    """Decode with the engine's recorded temperature and correction unless others are given."""
    t = family_state.get("temperature", DEFAULT_TEMPERATURE) if temperature is None else temperature
    beta = family_state.get("correction", 0.0) if correction is None else correction
    return decode_distribution(raw, family_state["ab_centres"], method, t, family_state.get("log_rebalance"), beta)
