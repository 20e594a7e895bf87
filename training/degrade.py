"""Degraded gray inputs for training: the photos people colour are old prints, scans and film frames, with
other tone curves, softer focus and grain than the clean web images the engines learn from. Each chosen
training image's lightness gets a random mix of the three before the network sees it; the target colour
stays the clean image's, so the network learns to colour through them (and sees more distinct inputs than
the training set holds).

The draws come from a generator seeded by the run's seed and step, so a resumed run degrades exactly as the
uninterrupted one would have.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# Ranges of each degradation, on lightness in [0, 1] (CIELAB L / 100, or BT.601 Y).
GAMMA_LOG_RANGE = 0.35  # tone curve x ** gamma, log(gamma) uniform in +-this
CONTRAST_RANGE = (0.75, 1.15)  # stretch about the image's mean
BLUR_SIGMA_RANGE = (0.3, 1.0)  # Gaussian blur, pixels of the training crop
GRAIN_SIGMA_MAX = 0.04  # additive Gaussian grain, up to 4 L units


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def degrade_lightness(
    x: torch.Tensor, probability: float, gen: torch.Generator, first: int = 0, total: int | None = None
) -> torch.Tensor:
    """``x (N, 1, H, W)`` in [0, 1] -> a copy where each image, with ``probability``, has each of a tone
    curve, a blur and grain with probability 1/2 (random strengths).

    The numbers are drawn for a whole batch of ``total`` images (default N) and ``x`` takes those of its
    images ``first`` to ``first + N``: a process holding one share of a batch (``torchrun``) degrades its
    images as one process holding all of them would. A fixed count is drawn whatever is chosen, so the
    sequence does not depend on the data."""
    n = x.shape[0]
    total = n if total is None else total
    u = torch.rand(total, 8, generator=gen)[first : first + n].to(x.device)
    noise = torch.randn((total, *x.shape[1:]), generator=gen)[first : first + n].to(x.device, x.dtype)
    chosen = u[:, 0] < probability
    tone, blur, grain = chosen & (u[:, 1] < 0.5), chosen & (u[:, 2] < 0.5), chosen & (u[:, 3] < 0.5)
    x = x.clone()
    if tone.any():
        gamma = torch.exp((u[:, 4] * 2 - 1) * GAMMA_LOG_RANGE)[tone].view(-1, 1, 1, 1)
        lo, hi = CONTRAST_RANGE
        contrast = (lo + (hi - lo) * u[:, 5])[tone].view(-1, 1, 1, 1)
        y = x[tone].clamp(0, 1) ** gamma
        mean = y.mean(dim=(2, 3), keepdim=True)
        x[tone] = mean + (y - mean) * contrast
    if blur.any():
        lo, hi = BLUR_SIGMA_RANGE
        # One radius for every image and batch, so an image's blur does not depend on which others were drawn.
        x[blur] = _gaussian_blur(x[blur], (lo + (hi - lo) * u[:, 6])[blur], math.ceil(3 * hi))
    if grain.any():
        x[grain] = x[grain] + noise[grain] * (u[:, 7] * GRAIN_SIGMA_MAX)[grain].view(-1, 1, 1, 1)
    return x.clamp(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Each image ``(M, 1, H, W)`` blurred with its own ``sigma (M,)``, truncated at ``radius``: separable,
    one grouped convolution a pass."""
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)
    m, _, h, w = x.shape
    y = F.pad(x.view(1, m, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(m, 1, 1, -1), groups=m)
    return F.conv2d(y, k.view(m, 1, -1, 1), groups=m).view(m, 1, h, w)
