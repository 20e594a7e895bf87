"""Colorization quality metrics. Pure functions and small accumulators over torch tensors.

- ab-error AuC (Zhang et al. 2016): the fraction of pixels whose predicted ab lies within an L2
  distance t of the truth, swept over t = 0..150 and averaged (the normalised area under that
  cumulative curve), x100. Pooled over all pixels of a set. The class-rebalanced variant weights each
  pixel by the inverse prior probability of its true ab bin (lambda 0), as in the paper.
- Colourfulness (Hasler and Suesstrunk 2003) on 8-bit sRGB scale.
- Colour fidelity (``ColourFidelity``): what a user sees first, that averages hide. The mean predicted
  a* on pixels whose true colour is green (a* < -8, chroma > 12): lawns and trees; and the share of
  truly neutral pixels (chroma < 8) that the prediction colours strongly (chroma > 25): false colour on
  walls, roads and skies of overcast days (issue 16: "false colour on about half of the truly neutral
  pixels"). Until session 16 this was the other conditional, the truly neutral share among the strongly
  coloured pixels, which rewards painting more of the picture strongly, rightly or not.
- CDC, colour distribution consistency of a video (Liu et al. 2021): Jensen-Shannon divergence of the
  per-channel colour histograms of frames 1, 2 and 4 apart (``ColourDistributionConsistency``).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
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

    def merge(self, other: AbErrorCurve) -> None:
        self.plain += other.plain
        self.rebalanced += other.rebalanced

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


GREEN_A_MAX, GREEN_CHROMA_MIN = -8.0, 12.0  # a truly green pixel: a* below this, chroma above that
NEUTRAL_CHROMA_MAX, STRONG_CHROMA_MIN = 8.0, 25.0  # truly neutral; predicted strongly coloured


class ColourFidelity:
    """Pooled over all pixels of a set: mean predicted a* on truly green pixels, and the share of truly
    neutral pixels predicted with strong chroma (see the module doc). NaN where no pixel qualifies."""

    def __init__(self) -> None:
        self.green_pixels = 0
        self.green_a_sum = 0.0
        self.green_a_true_sum = 0.0  # the truth's own mean a* there: the figure to approach
        self.neutral_pixels = 0
        self.neutral_strong = 0

    def update(self, ab_pred: torch.Tensor, ab_true: torch.Tensor) -> None:
        """ab ``(..., 2, H, W)`` in CIELAB units."""
        a_pred, a_true = ab_pred.double().select(-3, 0), ab_true.double().select(-3, 0)
        c_pred, c_true = ab_pred.double().norm(dim=-3), ab_true.double().norm(dim=-3)
        green = (a_true < GREEN_A_MAX) & (c_true > GREEN_CHROMA_MIN)
        self.green_pixels += int(green.sum())
        self.green_a_sum += float(a_pred[green].sum())
        self.green_a_true_sum += float(a_true[green].sum())
        neutral = c_true < NEUTRAL_CHROMA_MAX
        self.neutral_pixels += int(neutral.sum())
        self.neutral_strong += int((neutral & (c_pred > STRONG_CHROMA_MIN)).sum())

    def merge(self, other: ColourFidelity) -> None:
        self.green_pixels += other.green_pixels
        self.green_a_sum += other.green_a_sum
        self.green_a_true_sum += other.green_a_true_sum
        self.neutral_pixels += other.neutral_pixels
        self.neutral_strong += other.neutral_strong

    def green_a(self) -> float:
        return self.green_a_sum / self.green_pixels if self.green_pixels else float("nan")

    def green_a_true(self) -> float:
        return self.green_a_true_sum / self.green_pixels if self.green_pixels else float("nan")

    def false_colour_share(self) -> float:
        """Percent of truly neutral pixels that the prediction colours strongly."""
        return 100 * self.neutral_strong / self.neutral_pixels if self.neutral_pixels else float("nan")


class RgbErrorCurve(AbErrorCurve):
    """The seed paper's CIFAR-10 protocol: the same cumulative curve over thresholds 0..150, on the
    Euclidean distance between predicted and true sRGB colours in 8-bit units (no rebalancing)."""

    def __init__(self):
        super().__init__(None)

    def update(self, rgb_pred: torch.Tensor, rgb_true: torch.Tensor) -> None:
        """sRGB ``(..., 3, H, W)`` in [0, 1], compared as the 8-bit images the protocol scores."""
        super().update((rgb_pred.double() * 255).round(), (rgb_true.double() * 255).round())


def feature_stats(feats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, D)`` -> mean ``(D,)`` and covariance ``(D, D)`` (float64, unbiased, as pytorch-fid)."""
    f = feats.detach().cpu().double().numpy() if torch.is_tensor(feats) else np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N, D) with N >= 2, got {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``, with ``tr sqrt(S1 S2)`` from the eigenvalues
    of ``sqrt(S1) S2 sqrt(S1)`` (symmetric PSD, same spectrum as ``S1 S2``); numpy only.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    # Covariances from data are symmetric only up to round-off; eigh reads one triangle, so symmetrise.
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(_psd_clip(w))) @ v.T
    m = root1 @ s2 @ root1
    ev = _psd_clip(np.linalg.eigvalsh((m + m.T) / 2))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev).sum())


def _psd_clip(ev: np.ndarray) -> np.ndarray:
    # Eigenvalues of a PSD matrix below the round-off level (numpy's matrix_rank tolerance) are zeros that
    # came out as +-1e-16; left in, their square roots (~1e-8 each, thousands of them when N < 2048)
    # would add up to a visible bias.
    tol = float(np.abs(ev).max(initial=0.0)) * ev.shape[0] * np.finfo(np.float64).eps
    return np.where(ev > tol, ev, 0.0)


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


def psnr(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of sRGB in [0, 1] (peak 1), ``(..., 3, H, W)`` -> ``(...)``."""
    mse = (pred.double() - true.double()).square().flatten(-3).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-20))


def ssim(pred: torch.Tensor, true: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) over channels, ``(N, C, H, W)`` in [0, 1] -> ``(N,)``.

    Gaussian window (sigma 1.5, 11 taps), K1 0.01, K2 0.03, data range 1, population covariance, and
    only positions whose whole window lies inside the image: the settings of scikit-image's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
    """
    r = int(3.5 * sigma + 0.5)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    n, c = pred.shape[:2]

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.conv2d(x.reshape(n * c, 1, *x.shape[-2:]), k.view(1, 1, 1, -1))
        return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1))

    x, y = pred.double(), true.double()
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(n, c, -1).mean(-1).mean(-1)


def ciede2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 colour difference (Sharma et al. 2005 formulation), ``(..., 3, H, W)`` -> ``(..., H, W)``."""
    l1, a1, b1 = lab1.double().unbind(-3)
    l2, a2, b2 = lab2.double().unbind(-3)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360
    dl = l2 - l1
    dc = c2p - c1p
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(c1p * c2p == 0, torch.zeros_like(dh), dh)
    dhh = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh) / 2)
    l_bar = (l1 + l2) / 2
    cp_bar = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where(
        (h1p - h2p).abs() > 180, torch.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2), h_sum / 2
    )
    h_bar = torch.where(c1p * c2p == 0, h_sum, h_bar)
    t = (
        1
        - 0.17 * torch.cos(torch.deg2rad(h_bar - 30))
        + 0.24 * torch.cos(torch.deg2rad(2 * h_bar))
        + 0.32 * torch.cos(torch.deg2rad(3 * h_bar + 6))
        - 0.20 * torch.cos(torch.deg2rad(4 * h_bar - 63))
    )
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(torch.deg2rad(2 * d_theta)) * r_c
    return torch.sqrt((dl / s_l) ** 2 + (dc / s_c) ** 2 + (dhh / s_h) ** 2 + r_t * (dc / s_c) * (dhh / s_h))


# ---------------------------------------------------------------------------------------------
# CDC: colour distribution consistency (Liu et al. 2021)
# ---------------------------------------------------------------------------------------------

CDC_STEPS = (1, 2, 4)  # frame distances t of Liu et al., averaged with equal weights
CDC_BINS = 256  # one bin per 8-bit level, per channel
JS_MAX = math.log(2)  # the Jensen-Shannon divergence (natural log) of two disjoint distributions


def colour_histograms(rgb: torch.Tensor) -> torch.Tensor:
    """Normalised histograms ``(3, 256)`` float64 (each row sums to 1) of the R, G and B channels of a
    frame ``(3, H, W)``: uint8 as it is, float in [0, 1] rounded to the 8-bit levels first."""
    if rgb.dtype != torch.uint8:
        rgb = (rgb.double().clamp(0, 1) * 255).round().to(torch.uint8)
    flat = rgb.reshape(3, -1).long()
    offsets = torch.arange(3).view(3, 1) * CDC_BINS
    counts = torch.bincount((flat + offsets).flatten(), minlength=3 * CDC_BINS).view(3, CDC_BINS).double()
    return counts / flat.shape[1]


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats of distributions along the last axis (``(..., K)`` -> ``(...)``):
    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2`` and ``0 log 0 = 0``.
    Symmetric, 0 for equal distributions, at most ln 2 (disjoint supports)."""
    p, q = p.double(), q.double()
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a / torch.where(a > 0, m, 1.0)).log(), 0.0).sum(-1)

    return (kl(p) + kl(q)) / 2


class ColourDistributionConsistency:
    """CDC of Liu et al. 2021 ("Temporally consistent video colorization with deep feature propagation
    and self-regularization learning", arXiv 2110.04562), streamed one frame at a time; lower is steadier.

    For a video of N frames I_1..I_N and a frame distance t::

        CDC_t = 1/3 sum_{c in R,G,B} 1/(N - t) sum_{i=1}^{N-t} JS(h_c(I_i), h_c(I_{i+t}))
        CDC   = (CDC_1 + CDC_2 + CDC_4) / 3

    where ``h_c`` is the normalised histogram of channel c and JS the Jensen-Shannon divergence with the
    natural logarithm, so every term lies in [0, ln 2]. The choices are those of the authors' evaluation
    code (``compute_JS_bgr`` and the ``dilation = [1, 2, 4]`` weights ``1/3`` in the TCVC repository, also
    the NTIRE 2023 video colourisation challenge's CDC): 256 bins per channel, one per 8-bit level, over
    the 8-bit sRGB values of the decoded frames (not CIELAB: the metric is defined on the frames as they
    are stored and viewed, and 8-bit levels give exact bins without a range or bin-width choice), and
    scipy's ``entropy`` (natural log). Whole frames, no motion compensation: it measures how much the
    colour distribution jumps, which flicker does and smooth motion mostly does not.

    ``update(rgb)`` takes a frame ``(3, H, W)`` (uint8, or float in [0, 1]); only the last four
    histograms are held. ``value()`` needs more than ``max(steps)`` frames, so that every distance has
    at least one pair (the authors' code gives NaN otherwise).
    """

    def __init__(self, steps: tuple[int, ...] = CDC_STEPS):
        if not steps or min(steps) < 1:
            raise ValueError(f"steps must be positive frame distances, got {steps}")
        self.steps = tuple(steps)
        self._recent: deque[torch.Tensor] = deque(maxlen=max(self.steps))
        self._sums = dict.fromkeys(self.steps, 0.0)
        self._pairs = dict.fromkeys(self.steps, 0)
        self.frames = 0

    def update(self, rgb: torch.Tensor) -> None:
        self.update_histograms(colour_histograms(rgb))

    def update_histograms(self, hist: torch.Tensor) -> None:
        """Add a frame given by its ``colour_histograms`` ``(3, 256)``."""
        for t in self.steps:
            if len(self._recent) >= t:
                self._sums[t] += float(js_divergence(self._recent[-t], hist).mean())
                self._pairs[t] += 1
        self._recent.append(hist)
        self.frames += 1

    def value(self) -> float:
        if self.frames <= max(self.steps):
            raise ValueError(f"CDC needs more than {max(self.steps)} frames, got {self.frames}")
        return sum(self._sums[t] / self._pairs[t] for t in self.steps) / len(self.steps)


def cdc(frames, steps: tuple[int, ...] = CDC_STEPS) -> float:
    """CDC (``ColourDistributionConsistency``) of an iterable of frames ``(3, H, W)``."""
    acc = ColourDistributionConsistency(steps)
    for frame in frames:
        acc.update(frame)
    return acc.value()
