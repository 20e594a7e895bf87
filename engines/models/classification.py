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


class SoftEncoder:
    """Zhang et al.'s soft targets as ``(bin index, weight)`` pairs over the ``k`` nearest bins.

    The bins lie on the 10-unit grid, so a pixel's nearest bins are looked for among the 5x5 grid
    cells around its own (25 candidates instead of all Q): any bin outside that block is at least
    2.5 cells away. A pixel whose k-th candidate is farther than that (next to a hole in the gamut,
    or off the grid) falls back to the exhaustive search, so the targets are exact either way.
    """

    def __init__(self, centres: torch.Tensor, k: int = 5, sigma: float = 5.0):
        self.centres, self.k, self.sigma = centres, k, sigma
        cell = ((centres + AB_RANGE) / AB_BIN).floor().long()
        on_grid = bool(((cell >= 0) & (cell < AB_GRID)).all()) and torch.allclose(
            centres, cell * AB_BIN - AB_RANGE + AB_BIN / 2
        )
        self.table = None  # grid cell (padded by 2 each side) -> bin number, -1 where no bin
        if on_grid:
            self.table = torch.full((AB_GRID + 4, AB_GRID + 4), -1, dtype=torch.long)
            self.table[cell[:, 0] + 2, cell[:, 1] + 2] = torch.arange(len(centres))
        r = torch.arange(-2, 3)
        self.offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2) + 2

    def to(self, device: torch.device) -> SoftEncoder:
        self.centres, self.offsets = self.centres.to(device), self.offsets.to(device)
        self.table = None if self.table is None else self.table.to(device)
        return self

    def _exhaustive(self, pix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        near_d2, idx = torch.cdist(pix, self.centres).square().topk(self.k, dim=1, largest=False)
        return near_d2, idx

    def __call__(self, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ab ``(N, 2, H, W)`` -> bin indices and weights, each ``(N, k, H, W)``; weights sum to 1."""
        n, _, h, w = ab.shape
        pix = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
        if self.table is None:
            near_d2, idx = self._exhaustive(pix)
        else:
            cell = ((pix + AB_RANGE) / AB_BIN).floor().long()
            inside = ((cell >= 0) & (cell < AB_GRID)).all(1)
            cell = cell.clamp(0, AB_GRID - 1)
            cand = self.table[cell[:, None, 0] + self.offsets[:, 0], cell[:, None, 1] + self.offsets[:, 1]]
            d2 = (pix[:, None] - self.centres[cand.clamp(min=0)]).square().sum(-1)
            near_d2, j = d2.masked_fill(cand < 0, float("inf")).topk(self.k, dim=1, largest=False)
            idx = cand.gather(1, j)
            redo = ~inside | (near_d2[:, -1] > (2.5 * AB_BIN) ** 2)
            if redo.any():
                near_d2[redo], idx[redo] = self._exhaustive(pix[redo])
        weights = torch.softmax(-near_d2 / (2 * self.sigma**2), dim=1)
        shape = (n, h, w, self.k)
        return idx.view(shape).permute(0, 3, 1, 2), weights.view(shape).permute(0, 3, 1, 2)


def log_rebalance_weights(centres: torch.Tensor, bin_weights: torch.Tensor) -> torch.Tensor:
    """``log w`` at each centre ``(Q,)``, from per-grid-bin training weights (``metrics.rebalance_weights``)."""
    return bin_weights[ab_bin_index(centres.T[None, :, :, None]).flatten()].clamp(min=1e-12).log().float()


def annealed_mean(
    logits: torch.Tensor,
    centres: torch.Tensor,
    temperature: float | torch.Tensor,
    log_rebalance: torch.Tensor | None = None,
    correction: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """The mean of ``softmax((logits - correction * log w) / T)`` over the bin centres: logits ``(N, Q, h, w)``
    -> ab ``(N, 2, h, w)``. Tensor arithmetic only, so that it traces into ONNX with T and the correction
    as inputs (``engines.runtime.export.DecodedNetwork``)."""
    if log_rebalance is not None:
        logits = logits - correction * log_rebalance.to(logits.dtype).view(1, -1, 1, 1)
    p = F.softmax(logits / temperature, dim=1)
    return torch.einsum("nqhw,qc->nchw", p, centres.to(p.dtype))


def decode_distribution(
    logits: torch.Tensor,
    centres: torch.Tensor,
    method: str = "annealed",
    temperature: float = DEFAULT_TEMPERATURE,
    log_rebalance: torch.Tensor | None = None,
    correction: float = 0.0,
) -> torch.Tensor:
    """logits ``(N, Q, h, w)`` -> ab ``(N, 2, h, w)`` in CIELAB units."""
    if correction and log_rebalance is None:
        raise ValueError("this engine records no rebalancing weights, so it cannot be corrected")
    if method == "argmax":
        if correction:
            logits = logits - correction * log_rebalance.to(logits.dtype).view(1, -1, 1, 1)
        return centres[logits.argmax(1)].permute(0, 3, 1, 2)
    t = 1.0 if method == "mean" else temperature
    if method not in DECODINGS or t <= 0:
        raise ValueError(f"decoding must be one of {', '.join(DECODINGS)} with a positive temperature")
    return annealed_mean(logits, centres, t, log_rebalance if correction else None, correction)


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
