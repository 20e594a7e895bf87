"""Tests for engines.metrics: known answers and brute-force numpy reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage import color as skcolor
from skimage import data as skdata

from engines import metrics as M

NBINS = 22 * 22
THRESHOLDS = np.arange(151)  # t = 0..150


# --------------------------------------------------------------------------------------------
# Independent reference implementations (numpy, straightforward)
# --------------------------------------------------------------------------------------------


def ref_bin_index(ab: np.ndarray) -> np.ndarray:
    """ab with channels on axis -3 -> flat index of the 10-unit bin over [-110, 110), clamped."""
    ia = np.clip(np.floor((ab[..., 0, :, :] + 110.0) / 10.0), 0, 21).astype(np.int64)
    ib = np.clip(np.floor((ab[..., 1, :, :] + 110.0) / 10.0), 0, 21).astype(np.int64)
    return ia * 22 + ib


def ref_errors(pairs) -> np.ndarray:
    return np.concatenate([np.sqrt(((p - t) ** 2).sum(axis=-3)).ravel() for p, t in pairs])


def ref_auc(err: np.ndarray, w: np.ndarray | None = None) -> float:
    """Brute force: for each threshold t, the (weighted) fraction of pixels with error <= t."""
    if w is None:
        w = np.ones_like(err)
    fractions = []
    for t in THRESHOLDS:
        fractions.append(w[err <= t].sum() / w.sum())
    return 100.0 * float(np.mean(fractions))


def ref_inverse_prior_weights(counts: np.ndarray) -> np.ndarray:
    """lam = 0 weights: 1 / p on seen bins, 0 elsewhere, scaled so that sum(p * w) = 1."""
    p = counts / counts.sum()
    w = np.zeros_like(p)
    w[p > 0] = 1.0 / p[p > 0]
    return w / (p * w).sum()


def ref_colourfulness(rgb01: np.ndarray) -> float:
    """Hasler and Suesstrunk 2003 on one (H, W, 3) image in [0, 1], computed on the 0..255 scale."""
    r, g, b = [rgb01[..., i].astype(np.float64) * 255 for i in range(3)]
    rg = r - g
    yb = 0.5 * (r + g) - b
    sigma = np.sqrt(np.std(rg) ** 2 + np.std(yb) ** 2)
    mu = np.sqrt(np.mean(rg) ** 2 + np.mean(yb) ** 2)
    return float(sigma + 0.3 * mu)


def known_ab_images() -> list[np.ndarray]:
    """ab (2, H, W) of three bundled scikit-image photos at different sizes."""
    imgs = [
        skdata.astronaut()[::16, ::16],  # 32 x 32
        skdata.chelsea()[::10, ::12],  # 30 x 38
        skdata.coffee()[::13, ::9],  # 31 x 67
    ]
    out = []
    for im in imgs:
        lab = skcolor.rgb2lab(im)  # uint8 -> float in [0, 1] -> Lab (D65, 2 degrees)
        out.append(np.ascontiguousarray(np.moveaxis(lab[..., 1:], -1, 0)))
    return out


@pytest.fixture(scope="module")
def ab_images():
    return known_ab_images()


# --------------------------------------------------------------------------------------------
# AbErrorCurve: known answers
# --------------------------------------------------------------------------------------------


def _random_ab(shape, seed, lo=-100.0, hi=100.0, integer=False):
    rng = np.random.default_rng(seed)
    if integer:
        return rng.integers(int(lo), int(hi) + 1, size=shape).astype(np.float64)
    return rng.uniform(lo, hi, size=shape)


def test_perfect_prediction_is_100(ab_images):
    counts = np.bincount(np.concatenate([ref_bin_index(a).ravel() for a in ab_images]), minlength=NBINS)
    curve = M.AbErrorCurve(M.rebalance_weights(torch.from_numpy(counts.astype(np.float64)), lam=0.0))
    for a in ab_images:
        t = torch.from_numpy(a)
        curve.update(t.clone(), t)
    assert curve.auc() == pytest.approx(100.0, abs=1e-9)
    assert curve.auc_rebalanced() == pytest.approx(100.0, abs=1e-9)


def _offset(d: float, direction: int) -> np.ndarray:
    """An ab offset of L2 length exactly d (every component exactly representable)."""
    if direction == 4:  # 3-4-5 triangle; only used for d divisible by 5
        return np.array([3 * d / 5, -4 * d / 5])
    return [np.array([d, 0.0]), np.array([0.0, d]), np.array([-d, 0.0]), np.array([0.0, -d])][direction]


@settings(max_examples=60, deadline=None)
@given(d=st.integers(0, 150), direction=st.integers(0, 4), batched=st.booleans())
def test_constant_integer_error(d, direction, batched):
    if direction == 4 and d % 5:
        direction = 0
    # Integer-valued truth so that pred - truth is exact and the error is exactly d.
    ab_true = _random_ab((2, 2, 7, 5) if batched else (2, 9, 4), seed=d, integer=True)
    off = _offset(float(d), direction).reshape(2, 1, 1)
    ab_pred = ab_true + off
    assert np.allclose(np.sqrt(((ab_pred - ab_true) ** 2).sum(-3)), d, atol=0, rtol=0)
    counts = np.ones(NBINS)
    counts[::3] = 7.0  # non-uniform weights: must not matter when every pixel has the same error
    curve = M.AbErrorCurve(M.rebalance_weights(torch.from_numpy(counts), lam=0.0))
    curve.update(torch.from_numpy(ab_pred), torch.from_numpy(ab_true))
    # By the definition: error d is within threshold t for t = d..150, i.e. 151 - d of 151 thresholds.
    expected = 100.0 * sum(1 for t in range(151) if d <= t) / 151
    assert expected == pytest.approx(100.0 * (151 - d) / 151)
    assert curve.auc() == pytest.approx(expected, abs=1e-9)
    assert curve.auc_rebalanced() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("d", [0.5, 2.5, 99.5, 149.5])
def test_constant_half_integer_error(d):
    # An error e is within t iff e <= t, so e = k + 0.5 first counts at t = k + 1.
    ab_true = _random_ab((2, 6, 6), seed=1, integer=True)
    curve = M.AbErrorCurve()
    curve.update(torch.from_numpy(ab_true + _offset(d, 1).reshape(2, 1, 1)), torch.from_numpy(ab_true))
    assert curve.auc() == pytest.approx(100.0 * (151 - math.ceil(d)) / 151, abs=1e-9)


@pytest.mark.parametrize("d", [150.5, 151.0, 200.0, 1e6])
def test_error_above_150_everywhere_is_zero(d):
    ab_true = _random_ab((3, 2, 4, 4), seed=2, integer=True)
    curve = M.AbErrorCurve(M.rebalance_weights(torch.ones(NBINS), lam=0.0))
    curve.update(torch.from_numpy(ab_true + _offset(d, 2).reshape(2, 1, 1)), torch.from_numpy(ab_true))
    assert curve.auc() == pytest.approx(0.0, abs=1e-12)
    assert curve.auc_rebalanced() == pytest.approx(0.0, abs=1e-12)


def test_error_exactly_150_counts_once():
    ab_true = _random_ab((2, 3, 3), seed=3, integer=True)
    curve = M.AbErrorCurve()
    curve.update(torch.from_numpy(ab_true + _offset(150.0, 4).reshape(2, 1, 1)), torch.from_numpy(ab_true))
    assert curve.auc() == pytest.approx(100.0 / 151, abs=1e-9)


def test_mixed_known_errors():
    # Half the pixels exact, half off by 10: (151 + 141) / 2 / 151 * 100.
    ab_true = np.zeros((2, 2, 4))
    ab_pred = ab_true.copy()
    ab_pred[0, 1] = 10.0
    curve = M.AbErrorCurve()
    curve.update(torch.from_numpy(ab_pred), torch.from_numpy(ab_true))
    assert curve.auc() == pytest.approx(100.0 * (151 + 141) / 2 / 151, abs=1e-9)


def test_gray_prediction_matches_brute_force(ab_images):
    curve = M.AbErrorCurve()
    pairs = []
    for i, a in enumerate(ab_images):
        pred = np.zeros_like(a)
        pairs.append((pred, a))
        if i == 1:  # mix batched (1, 2, H, W) and unbatched (2, H, W) updates
            curve.update(torch.from_numpy(pred[None]), torch.from_numpy(a[None]))
        else:
            curve.update(torch.from_numpy(pred), torch.from_numpy(a))
    expected = ref_auc(ref_errors(pairs))
    assert 50.0 < expected < 100.0  # sanity: real photos are neither gray nor wildly saturated
    assert curve.auc() == pytest.approx(expected, abs=1e-9)
    # Pooled over pixels, not averaged per image: differs from the mean of per-image AuCs.
    per_image = np.mean([ref_auc(ref_errors([p])) for p in pairs])
    assert abs(per_image - expected) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_prediction_matches_brute_force(dtype):
    pairs = []
    curve = M.AbErrorCurve()
    for k, shape in enumerate([(2, 2, 9, 11), (2, 13, 5), (3, 2, 4, 4)]):
        a = _random_ab(shape, seed=10 + k, lo=-110, hi=110).astype(np.float64)
        p = a + _random_ab(shape, seed=20 + k, lo=-80, hi=80)
        ta, tp = torch.from_numpy(a).to(dtype), torch.from_numpy(p).to(dtype)
        pairs.append((tp.double().numpy(), ta.double().numpy()))
        curve.update(tp, ta)
    expected = ref_auc(ref_errors(pairs))
    assert curve.auc() == pytest.approx(expected, abs=1e-9)


def test_merged_curves_give_the_curve_of_all_pixels():
    a = _random_ab((2, 6, 5), seed=30, lo=-110, hi=110)
    p = a + _random_ab((2, 6, 5), seed=31, lo=-80, hi=80)
    weights = M.rebalance_weights(torch.rand(NBINS, generator=torch.Generator().manual_seed(0)) + 0.1, lam=0.0)
    whole, first, second = M.AbErrorCurve(weights), M.AbErrorCurve(weights), M.AbErrorCurve(weights)
    whole.update(torch.from_numpy(p), torch.from_numpy(a))
    first.update(torch.from_numpy(p[..., :2]), torch.from_numpy(a[..., :2]))
    second.update(torch.from_numpy(p[..., 2:]), torch.from_numpy(a[..., 2:]))
    first.merge(second)
    assert first.auc() == pytest.approx(whole.auc(), abs=1e-12)
    assert first.auc_rebalanced() == pytest.approx(whole.auc_rebalanced(), abs=1e-12)
    assert 0 < whole.auc_rebalanced() != whole.auc()  # the weights count


def test_empty_curve_is_nan():
    curve = M.AbErrorCurve()
    assert math.isnan(curve.auc())
    assert math.isnan(curve.auc_rebalanced())


# --------------------------------------------------------------------------------------------
# AbErrorCurve: rebalanced
# --------------------------------------------------------------------------------------------


def test_rebalanced_matches_weighted_brute_force(ab_images):
    # Prior from the first two photos plus random ab; evaluate on all three (some true bins unseen in
    # the prior get weight 0) with a noisy prediction.
    rng = np.random.default_rng(5)
    extra = rng.uniform(-60, 60, size=(2, 20, 20))
    prior_ab = [ab_images[0], ab_images[1], extra]
    counts = np.bincount(np.concatenate([ref_bin_index(a).ravel() for a in prior_ab]), minlength=NBINS)
    w_bin = ref_inverse_prior_weights(counts.astype(np.float64))

    weights = M.rebalance_weights(torch.from_numpy(counts).double(), lam=0.0)
    np.testing.assert_allclose(weights.double().numpy(), w_bin, rtol=1e-6, atol=0)

    curve = M.AbErrorCurve(weights)
    pairs, pix_w = [], []
    for k, a in enumerate(ab_images):
        pred = 0.5 * a + rng.normal(0, 15, size=a.shape)
        pairs.append((pred, a))
        pix_w.append(w_bin[ref_bin_index(a)].ravel())
        curve.update(torch.from_numpy(pred), torch.from_numpy(a))
    err = ref_errors(pairs)
    w = np.concatenate(pix_w)
    assert (w == 0).any() and (w > 0).any()
    expected = ref_auc(err, w)
    assert curve.auc_rebalanced() == pytest.approx(expected, abs=1e-4)
    assert curve.auc() == pytest.approx(ref_auc(err), abs=1e-9)
    assert abs(curve.auc_rebalanced() - curve.auc()) > 0.5  # the weighting really matters here


def test_rebalanced_with_uniform_prior_over_occupied_bins_equals_plain(ab_images):
    occupied = np.zeros(NBINS)
    for a in ab_images:
        occupied[np.unique(ref_bin_index(a))] = 1.0
    assert 5 < occupied.sum() < NBINS
    curve = M.AbErrorCurve(M.rebalance_weights(torch.from_numpy(occupied), lam=0.0))
    rng = np.random.default_rng(6)
    for a in ab_images:
        curve.update(torch.from_numpy(a + rng.normal(0, 20, size=a.shape)), torch.from_numpy(a))
    assert 5 < curve.auc() < 95
    assert curve.auc_rebalanced() == pytest.approx(curve.auc(), abs=1e-5)


# --------------------------------------------------------------------------------------------
# rebalance_weights
# --------------------------------------------------------------------------------------------


def _random_prior(seed: int, zero_frac: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 1000, size=NBINS).astype(np.float64)
    counts[rng.random(NBINS) < zero_frac] = 0.0
    return counts


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_rebalance_expectation_is_one(lam, seed):
    counts = _random_prior(seed)
    w = M.rebalance_weights(torch.from_numpy(counts), lam=lam).double().numpy()
    p = counts / counts.sum()
    assert w.shape == (NBINS,)
    assert np.all(w >= 0) and np.all(np.isfinite(w))
    assert (p * w).sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_rebalance_scale_invariant(lam):
    counts = _random_prior(3)
    w1 = M.rebalance_weights(torch.from_numpy(counts), lam=lam)
    w2 = M.rebalance_weights(torch.from_numpy(counts * 123.0), lam=lam)
    torch.testing.assert_close(w1, w2, rtol=1e-6, atol=0)


def test_rebalance_lam_one_is_uniform_on_seen_bins():
    counts = _random_prior(4)
    w = M.rebalance_weights(torch.from_numpy(counts), lam=1.0).double().numpy()
    seen = counts > 0
    np.testing.assert_allclose(w[seen], 1.0, rtol=1e-6)


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.9])
def test_rebalance_monotone_and_formula(lam):
    counts = _random_prior(5)
    w = M.rebalance_weights(torch.from_numpy(counts), lam=lam).double().numpy()
    seen = counts > 0
    p = counts[seen] / counts.sum()
    ws = w[seen]
    # Rarer bin -> larger weight (strictly, for distinct probabilities).
    order = np.argsort(p, kind="stable")
    ps, wsorted = p[order], ws[order]
    distinct = np.diff(ps) > 0
    assert distinct.sum() > 50
    assert np.all(np.diff(wsorted)[distinct] < 0)
    assert np.all(np.diff(wsorted)[~distinct] == 0)
    # Against the formula, independently normalised.
    q = seen.sum()
    ref = 1.0 / ((1 - lam) * p + lam / q)
    ref /= (p * ref).sum()
    np.testing.assert_allclose(ws, ref, rtol=1e-5)


def test_rebalance_lam_zero_unseen_bins_get_zero():
    counts = _random_prior(6)
    w = M.rebalance_weights(torch.from_numpy(counts), lam=0.0).double().numpy()
    assert np.all(w[counts == 0] == 0)
    assert np.all(w[counts > 0] > 0)
    np.testing.assert_allclose(w, ref_inverse_prior_weights(counts), rtol=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_rebalance_smoothing_keeps_normalisation(lam):
    # A peaked prior over a small region of the grid, smoothed with sigma = 0.5 bins.
    counts = np.zeros((22, 22))
    rng = np.random.default_rng(7)
    counts[8:14, 9:13] = rng.integers(1, 500, size=(6, 4))
    counts[10, 10] = 5000
    counts[0, 5] = counts[21, 21] = counts[14, 0] = 300  # on the border: smoothing leaks mass there
    counts = counts.ravel()
    w = M.rebalance_weights(torch.from_numpy(counts), lam=lam, sigma_bins=0.5).double().numpy()
    # Independent smoothing: scipy's Gaussian filter, zero padding, renormalised.
    ps = ndimage.gaussian_filter(counts.reshape(22, 22) / counts.sum(), sigma=0.5, mode="constant").ravel()
    ps /= ps.sum()
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert (ps * w).sum() == pytest.approx(1.0, abs=1e-5)
    # Smoothing spreads support: bins next to the occupied block get weight even though unseen.
    assert w[7 * 22 + 10] > 0 and counts[7 * 22 + 10] == 0
    # Formula check against the independently smoothed prior.
    seen = ps > 0
    ref = np.zeros(NBINS)
    ref[seen] = 1.0 / ((1 - lam) * ps[seen] + lam / seen.sum())
    ref /= (ps * ref).sum()
    big = ref > 1e-3 * ref.max()  # far tails depend on the kernel truncation; skip them
    np.testing.assert_allclose(w[big], ref[big], rtol=1e-3)


# --------------------------------------------------------------------------------------------
# ab_bin_index / ab_histogram
# --------------------------------------------------------------------------------------------


def _ab(a: float, b: float) -> torch.Tensor:
    return torch.tensor([a, b], dtype=torch.float64).view(2, 1, 1)


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (-110.0, -110.0, 0),
        (109.9, 109.9, 21 * 22 + 21),
        (-110.0, 109.9, 21),
        (109.9, -110.0, 21 * 22),
        (500.0, 500.0, 21 * 22 + 21),
        (-500.0, -500.0, 0),
        (500.0, -500.0, 21 * 22),
        (-500.0, 500.0, 21),
        (110.0, 0.0, 21 * 22 + 11),
        (-110.0001, 0.0, 11),
        (0.0, 0.0, 11 * 22 + 11),
        (-0.001, -0.001, 10 * 22 + 10),
        (-100.0, -100.0001, 1 * 22 + 0),
        (5.0, -5.0, 11 * 22 + 10),
    ],
)
def test_ab_bin_index_known(a, b, expected):
    idx = M.ab_bin_index(_ab(a, b))
    assert idx.shape == (1, 1)
    assert idx.dtype == torch.int64
    assert int(idx) == expected


@pytest.mark.parametrize("shape", [(2, 7, 9), (3, 2, 5, 4), (2, 2, 2, 3, 3)])
def test_ab_bin_index_matches_reference(shape):
    ab = _random_ab(shape, seed=8, lo=-150, hi=150)
    idx = M.ab_bin_index(torch.from_numpy(ab))
    assert idx.shape == shape[:-3] + shape[-2:]
    np.testing.assert_array_equal(idx.numpy(), ref_bin_index(ab))
    assert idx.min() >= 0 and idx.max() < NBINS


@pytest.mark.parametrize("shape", [(2, 7, 9), (3, 2, 5, 4)])
def test_ab_histogram(shape):
    ab = _random_ab(shape, seed=9, lo=-130, hi=130)
    h = M.ab_histogram(torch.from_numpy(ab).float())
    n_pix = int(np.prod(shape)) // 2
    assert h.shape == (NBINS,) and h.dtype == torch.float64
    assert float(h.sum()) == n_pix
    np.testing.assert_array_equal(h.numpy(), np.bincount(ref_bin_index(ab).ravel(), minlength=NBINS))


# --------------------------------------------------------------------------------------------
# colourfulness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_colourfulness_gray_is_zero(dtype):
    rng = np.random.default_rng(10)
    g = torch.from_numpy(rng.random((2, 1, 8, 9))).to(dtype)
    out = M.colourfulness(g.expand(2, 3, 8, 9))
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.zeros(2, dtype=dtype), rtol=0, atol=1e-4)
    const = torch.full((3, 5, 5), 0.37, dtype=dtype)
    assert float(M.colourfulness(const)) == pytest.approx(0.0, abs=1e-4)


def test_colourfulness_pure_colours_known_values():
    def solid(r, g, b):
        return torch.tensor([r, g, b], dtype=torch.float64).view(3, 1, 1).expand(3, 4, 6)

    # Red: rg = 255, yb = 127.5, no spread -> 0.3 * sqrt(255^2 + 127.5^2) = 85.5296...
    red = 0.3 * math.sqrt(255**2 + 127.5**2)
    assert red == pytest.approx(85.5296, abs=1e-4)
    assert float(M.colourfulness(solid(1, 0, 0))) == pytest.approx(red, rel=1e-9)
    # Green: rg = -255, yb = 127.5 -> same value. Blue: rg = 0, yb = -255 -> 0.3 * 255 = 76.5.
    assert float(M.colourfulness(solid(0, 1, 0))) == pytest.approx(red, rel=1e-9)
    assert float(M.colourfulness(solid(0, 0, 1))) == pytest.approx(76.5, rel=1e-9)


def test_colourfulness_checkerboard_known_value():
    # Half pure red, half pure blue. rg: 255 or 0 -> mean 127.5, std 127.5.
    # yb: 127.5 or -255 -> mean -63.75, std 191.25.
    # M = sqrt(127.5^2 + 191.25^2) + 0.3 * sqrt(127.5^2 + 63.75^2) = 229.8540 + 42.7647 = 272.6187
    img = torch.zeros(3, 4, 4, dtype=torch.float64)
    mask = (torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)) % 2 == 0
    img[0][mask] = 1.0
    img[2][~mask] = 1.0
    expected = math.sqrt(127.5**2 + 191.25**2) + 0.3 * math.sqrt(127.5**2 + 63.75**2)
    assert expected == pytest.approx(272.6187, abs=1e-3)
    assert float(M.colourfulness(img)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_colourfulness_matches_reference_random(dtype):
    rng = np.random.default_rng(11)
    imgs = rng.random((4, 10, 13, 3)) ** np.array([1.0, 2.0, 0.5])  # unequal channel stats
    batch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(imgs, -1, -3))).to(dtype)
    out = M.colourfulness(batch)
    assert out.shape == (4,) and out.dtype == dtype
    ref = np.array([ref_colourfulness(im) for im in imgs])
    np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-4)
    # Unbatched (3, H, W) -> scalar.
    single = M.colourfulness(batch[2])
    assert single.shape == ()
    assert float(single) == pytest.approx(ref[2], rel=1e-4)


def test_colourfulness_real_photo():
    im = skdata.astronaut()[::8, ::8] / 255.0
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(im, -1, 0)))
    assert float(M.colourfulness(t)) == pytest.approx(ref_colourfulness(im), rel=1e-9)
    # A colour photo is more colourful than its own gray version.
    gray = t.mean(0, keepdim=True).expand(3, -1, -1)
    assert float(M.colourfulness(t)) > 10 * max(float(M.colourfulness(gray)), 1e-3)


# --------------------------------------------------------------------------------------------
# CDC: Jensen-Shannon divergence of colour histograms (Liu et al. 2021)
# --------------------------------------------------------------------------------------------


def _frame(levels: dict[int, list[int]], h: int = 4, w: int = 8) -> torch.Tensor:
    """A uint8 frame ``(3, H, W)``; channel c's pixels take the listed levels in equal shares (0 elsewhere)."""
    f = torch.zeros(3, h * w, dtype=torch.uint8)
    for c, values in levels.items():
        f[c] = torch.tensor(values, dtype=torch.uint8).repeat_interleave(h * w // len(values))
    return f.view(3, h, w)


def _js_closed_form(p: list[float], q: list[float]) -> float:
    """JS(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2, natural log."""

    def h(x):
        return -sum(v * math.log(v) for v in x if v > 0)

    return h([(a + b) / 2 for a, b in zip(p, q)]) - (h(p) + h(q)) / 2


def test_colour_histograms_count_8bit_levels_per_channel():
    f = _frame({0: [10, 20, 20, 200], 1: [255], 2: [0, 1]})
    hist = M.colour_histograms(f)
    assert hist.shape == (3, 256)
    torch.testing.assert_close(hist.sum(1), torch.ones(3, dtype=torch.float64))
    assert (hist[0, 10], hist[0, 20], hist[0, 200]) == (0.25, 0.5, 0.25)
    assert hist[1, 255] == 1.0 and hist[2, 0] == hist[2, 1] == 0.5
    # Float frames in [0, 1] are binned at their 8-bit level.
    torch.testing.assert_close(M.colour_histograms(f.double() / 255), hist)


def test_js_divergence_known_answers_symmetry_and_bound(rng):
    p, q = [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]
    got = M.js_divergence(torch.tensor(p), torch.tensor(q))
    assert float(got) == pytest.approx(_js_closed_form(p, q), abs=1e-12)
    assert float(M.js_divergence(torch.tensor(p), torch.tensor(p))) == 0.0
    assert float(M.js_divergence(torch.tensor([1.0, 0, 0]), torch.tensor([0, 0.5, 0.5]))) == pytest.approx(math.log(2))
    a = torch.from_numpy(rng.dirichlet(np.full(256, 0.3), size=50))
    b = torch.from_numpy(rng.dirichlet(np.full(256, 0.3), size=50))
    ab, ba = M.js_divergence(a, b), M.js_divergence(b, a)
    torch.testing.assert_close(ab, ba, rtol=0, atol=1e-15)
    assert (ab > 0).all() and (ab <= M.JS_MAX).all()
    from scipy.spatial.distance import jensenshannon  # its distance is the square root of the divergence

    np.testing.assert_allclose(ab.numpy(), [jensenshannon(x, y) ** 2 for x, y in zip(a.numpy(), b.numpy())], atol=1e-12)


def test_cdc_identical_frames_is_zero():
    f = _frame({0: [10, 20], 1: [30], 2: [40, 50, 60, 70]})
    assert M.cdc([f] * 6) == 0.0


def test_cdc_known_histogram_shift_and_step_averaging():
    # Red alternates between two distributions, green and blue stay put. Frames 1 apart differ by
    # JS(p, q); frames 2 and 4 apart are equal. So CDC = mean over steps (1, 2, 4) of the mean over
    # channels = (JS(p, q) / 3 + 0 + 0) / 3.
    p, q = [0.5, 0.5, 0.0], [0.0, 0.25, 0.75]  # over levels 100, 101, 102
    a = _frame({0: [100, 101], 1: [7], 2: [9]})
    b = _frame({0: [101, 102, 102, 102], 1: [7], 2: [9]})
    assert M.cdc([a, b] * 5) == pytest.approx(_js_closed_form(p, q) / 9, abs=1e-12)
    # A single shift in the middle: a a a a b b b b. Step 1: 1 of 7 pairs differ; step 2: 2 of 6;
    # step 4: 4 of 4 -- with disjoint red histograms, JS = ln 2.
    c = _frame({0: [200], 1: [7], 2: [9]})
    expected = math.log(2) / 3 * (1 / 7 + 2 / 6 + 4 / 4) / 3
    assert M.cdc([a] * 4 + [c] * 4) == pytest.approx(expected, abs=1e-12)
    assert M.cdc([a] * 4 + [c] * 4) == pytest.approx(M.cdc([c] * 4 + [a] * 4), abs=1e-15)  # time-symmetric


def test_cdc_agrees_with_the_authors_evaluation_code(rng):
    """Against a transcription of TCVC's ``compute_JS_bgr``/CDC (cv2.calcHist on BGR, 256 bins, scipy
    entropy, dilations 1, 2, 4 with weights 1/3)."""
    import cv2
    from scipy import stats

    frames = [(rng.integers(0, 256, (12, 16, 3)) // rng.integers(1, 4)).astype(np.uint8) for _ in range(9)]

    def js(p, q):
        m = (p + q) / 2
        return 0.5 * stats.entropy(p, m) + 0.5 * stats.entropy(q, m)

    hists = [[cv2.calcHist([f], [c], None, [256], [0, 256]).ravel() / (12 * 16) for c in range(3)] for f in frames]
    ref = 0.0
    for d in (1, 2, 4):
        per_channel = [np.mean([js(hists[i][c], hists[i + d][c]) for i in range(len(frames) - d)]) for c in range(3)]
        ref += np.mean(per_channel) / 3
    ours = M.cdc(torch.from_numpy(f[..., ::-1].copy()).permute(2, 0, 1) for f in frames)  # as RGB
    assert ours == pytest.approx(ref, rel=1e-9)


def test_cdc_needs_a_pair_at_every_step():
    f = _frame({0: [1]})
    with pytest.raises(ValueError, match="more than 4 frames"):
        M.cdc([f] * 4)
    assert M.cdc([f, _frame({0: [2]})], steps=(1,)) == pytest.approx(math.log(2) / 3)


# --- the seed paper's RGB-threshold AuC ---------------------------------------------------------


def test_rgb_curve_known_answers():
    rng = torch.Generator().manual_seed(0)
    rgb = (torch.rand(2, 3, 8, 8, generator=rng) * 128 + 64).round() / 255
    perfect = M.RgbErrorCurve()
    perfect.update(rgb, rgb)
    assert perfect.auc() == pytest.approx(100.0)
    # Every pixel off by 30/255 in red only: within threshold t exactly for t >= 30, t = 0..150.
    shifted = M.RgbErrorCurve()
    shifted.update(rgb + torch.tensor([30 / 255, 0, 0]).view(1, 3, 1, 1), rgb)
    assert shifted.auc() == pytest.approx(100 * (151 - 30) / 151, abs=1e-6)
    # (3, 4, 0) / 255 off: distance 5 in 8-bit units.
    five = M.RgbErrorCurve()
    five.update(rgb + torch.tensor([3 / 255, 4 / 255, 0]).view(1, 3, 1, 1), rgb)
    assert five.auc() == pytest.approx(100 * (151 - 5) / 151, abs=1e-4)


# --- Frechet distance (FID's formula) ----------------------------------------------------------


def random_cov(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def reference_fid(mu1, s1, mu2, s2) -> float:
    """pytorch-fid's formula, with scipy's general matrix square root of S1 S2."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_identical_gaussians(rng):
    mu, s = rng.normal(size=8), random_cov(rng, 8)
    assert abs(M.frechet_distance(mu, s, mu, s)) < 1e-6


def test_one_dimensional_known_answer():
    # N(0, 1) vs N(3, 4): 3^2 + 1 + 4 - 2 * sqrt(1 * 4) = 10
    assert M.frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0, abs=1e-12)
    assert M.frechet_distance(0.0, 1.0, 3.0, 4.0) == pytest.approx(10.0, abs=1e-12)


def test_diagonal_closed_form(rng):
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_symmetric_and_matches_scipy_sqrtm(rng):
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    s1, s2 = random_cov(rng, 12), random_cov(rng, 12)
    d12, d21 = M.frechet_distance(mu1, s1, mu2, s2), M.frechet_distance(mu2, s2, mu1, s1)
    assert d12 == pytest.approx(d21, rel=1e-10)
    assert d12 == pytest.approx(reference_fid(mu1, s1, mu2, s2), rel=1e-8)


def test_singular_covariances(rng):
    # Fewer samples than dimensions (common with small photo sets): rank-deficient covariances.
    s1, s2 = random_cov(rng, 10, rank=3), random_cov(rng, 10, rank=4)
    mu = np.zeros(10)
    d = M.frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(d) and d >= 0
    assert abs(M.frechet_distance(mu, s1, mu, s1)) < 1e-9


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_feature_stats_and_fid_from_features(rng):
    feats = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 5))
    mu, sigma = M.feature_stats(torch.from_numpy(feats).float())
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False, ddof=1), rtol=1e-5, atol=1e-5)
    assert abs(M.frechet_distance(*M.feature_stats(feats), *M.feature_stats(feats))) < 1e-9
    shift = rng.normal(size=5)  # a translated set: same covariance, so FID = |shift|^2
    assert M.frechet_distance(*M.feature_stats(feats), *M.feature_stats(feats + shift)) == pytest.approx(
        (shift**2).sum(), rel=1e-9
    )
    few = rng.normal(size=(6, 20))  # N < D
    assert abs(M.frechet_distance(*M.feature_stats(few), *M.feature_stats(few))) < 1e-9
    with pytest.raises(ValueError):
        M.feature_stats(np.zeros((1, 5)))


def _ab_pixels(a: list[float], b: list[float]) -> torch.Tensor:
    """ab ``(2, 1, N)`` from per-pixel lists."""
    return torch.tensor([a, b], dtype=torch.float64)[:, None, :]


def test_colour_fidelity_known_answers():
    # Truth: two green pixels (a -20, b 10: chroma 22; a -9, b 9: chroma 12.7), one pale green that does
    # not count (a -9, b 0: chroma 9 < 12), two neutral ((2, 2) and (0, 0)), one red (30, 10), one blue.
    truth = _ab_pixels([-20, -9, -9, 2, 0, 30, 0], [10, 9, 0, 2, 0, 10, -30])
    # Prediction: a +4 and -6 on the green ones (mean -1), strong colour (chroma 40) on the first neutral
    # pixel and on the red and blue ones, weak colour (chroma 20) on the second neutral one and the pale green.
    pred = _ab_pixels([4, -6, 1, 40, 12, 0, 0], [0, 0, 0, 0, 16, 40, -40])
    f = M.ColourFidelity()
    f.update(pred, truth)
    assert f.green_pixels == 2
    assert f.green_a() == pytest.approx(-1.0)
    assert f.green_a_true() == pytest.approx(-14.5)
    # Of the 2 truly neutral pixels 1 is coloured strongly: 50 %, whatever else is strong (the other
    # conditional, neutral among the 3 strong pixels, would be 33 %).
    assert f.false_colour_share() == pytest.approx(50.0)
    # Pooling two halves gives the same figures as one pass over everything.
    g, h = M.ColourFidelity(), M.ColourFidelity()
    g.update(pred[..., :4], truth[..., :4])
    h.update(pred[..., 4:], truth[..., 4:])
    g.merge(h)
    assert (g.green_a(), g.false_colour_share()) == (f.green_a(), f.false_colour_share())


def test_colour_fidelity_boundaries_and_empty():
    f = M.ColourFidelity()
    assert math.isnan(f.green_a()) and math.isnan(f.false_colour_share())
    # a* exactly -8 is not green; predicted chroma exactly 25 is not strong; truth chroma exactly 8 is not neutral.
    f.update(_ab_pixels([25, 26], [0, 0]), _ab_pixels([-8, 8], [20, 0]))
    assert f.green_pixels == 0
    assert f.neutral_pixels == 0 and math.isnan(f.false_colour_share())
    f.update(_ab_pixels([25, 26], [0, 0]), _ab_pixels([7.9, 7.9], [0, 0]))
    assert f.neutral_pixels == 2 and f.neutral_strong == 1
    # A perfect prediction of a lawn beside a wall reproduces the truth's own a*.
    lawn = _ab_pixels([-18, -22, -25, 1], [15, 20, 5, -1])  # and one gray pixel: no false colour
    p = M.ColourFidelity()
    p.update(lawn, lawn)
    assert p.green_a() == pytest.approx(p.green_a_true()) == pytest.approx(-65 / 3)
    assert p.false_colour_share() == 0.0
