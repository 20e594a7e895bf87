"""Zhang et al.'s classification machinery: bins, soft encoding, annealed-mean decoding."""

import pytest
import torch

from engines.metrics import AB_GRID, ab_histogram
from engines.models import classification


def _centres() -> torch.Tensor:
    ab = torch.stack(torch.meshgrid(torch.linspace(-60, 60, 25), torch.linspace(-40, 80, 25), indexing="ij"))
    return classification.bin_centres(ab_histogram(ab[None]))


def test_bin_centres_are_the_occupied_grid_cells():
    prior = torch.zeros(AB_GRID * AB_GRID)
    prior[0] = 3  # a in [-110, -100), b in [-110, -100)
    prior[AB_GRID + 2] = 1  # a in [-100, -90), b in [-90, -80)
    torch.testing.assert_close(classification.bin_centres(prior), torch.tensor([[-105.0, -105.0], [-95.0, -85.0]]))


def _exhaustive_targets(ab, centres, k=5, sigma=5.0):
    """Zhang et al.'s definition, directly: the k nearest of all bins, Gaussian-weighted."""
    pix = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    near_d2, idx = torch.cdist(pix, centres).square().topk(k, dim=1, largest=False)
    dense = torch.zeros(len(pix), len(centres)).scatter_(1, idx, torch.softmax(-near_d2 / (2 * sigma**2), 1))
    return dense


def _dense(idx, weights, q):
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return torch.zeros(flat(idx).shape[0], q).scatter_(1, flat(idx), flat(weights))


def test_soft_encoding_sums_to_one_over_five_nearest_bins():
    centres = _centres()
    ab = torch.tensor([[3.0, 7.0], [-55.0, 42.0]]).T.reshape(1, 2, 1, 2)
    idx, weights = classification.SoftEncoder(centres)(ab)
    assert idx.shape == weights.shape == (1, 5, 1, 2)
    torch.testing.assert_close(weights.sum(1), torch.ones(1, 1, 2))
    # The nearest bin gets the most mass.
    nearest = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), centres).argmin(1)
    assert (idx.gather(1, weights.argmax(1, keepdim=True)).flatten() == nearest).all()


@pytest.mark.parametrize("holes", [False, True])
def test_grid_soft_encoding_equals_the_exhaustive_search(holes):
    # A sparse, holed gamut puts some pixels' 5 nearest bins outside their 5x5 block (the fallback),
    # and pixels beyond +-110 fall off the grid; both must still get exactly the k nearest bins.
    prior = torch.zeros(AB_GRID * AB_GRID)
    prior[torch.randperm(AB_GRID * AB_GRID, generator=torch.Generator().manual_seed(0))[: 60 if holes else 300]] = 1
    centres = classification.bin_centres(prior)
    ab = (torch.rand(2, 2, 40, 40, generator=torch.Generator().manual_seed(1)) - 0.5) * 260
    idx, weights = classification.SoftEncoder(centres)(ab)
    # (cdist's matrix-product distances differ from direct ones by float rounding only)
    torch.testing.assert_close(_dense(idx, weights, len(centres)), _exhaustive_targets(ab, centres), atol=1e-4, rtol=0)


def test_soft_encoding_of_bins_off_the_grid_is_exhaustive():
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 60.0], [-33.0, 7.0], [12.5, -40.0], [80.0, 80.0]])
    ab = (torch.rand(1, 2, 8, 8, generator=torch.Generator().manual_seed(2)) - 0.5) * 200
    idx, weights = classification.SoftEncoder(centres)(ab)
    # (cdist's matrix-product distances differ from direct ones by float rounding only)
    torch.testing.assert_close(_dense(idx, weights, len(centres)), _exhaustive_targets(ab, centres), atol=1e-4, rtol=0)


def test_decodings_on_a_known_distribution():
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 60.0]])
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).view(1, 3, 1, 1)
    mean = classification.decode_distribution(logits, centres, "mean")
    torch.testing.assert_close(mean.flatten(), torch.tensor([15.0, 12.0]))
    argmax = classification.decode_distribution(logits, centres, "argmax")
    torch.testing.assert_close(argmax.flatten(), torch.tensor([0.0, 0.0]))
    # Annealing sharpens towards the mode: p_i ~ p_i^(1/T), renormalised.
    p = torch.tensor([0.5, 0.3, 0.2]) ** (1 / 0.38)
    p = p / p.sum()
    annealed = classification.decode_distribution(logits, centres, "annealed", 0.38)
    torch.testing.assert_close(annealed.flatten(), p @ centres)
    with pytest.raises(ValueError):
        classification.decode_distribution(logits, centres, "annealed", 0.0)


def test_rebalancing_correction_recovers_the_unweighted_distribution():
    # A rebalanced loss teaches softmax(logits) = p * w / Z; a correction of 1 must decode p's mean.
    centres = _centres()
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(len(centres), generator=g), 0)
    log_w = torch.randn(len(centres), generator=g)
    logits = (p.log() + log_w).view(1, -1, 1, 1)
    want = (p[:, None] * centres).sum(0)
    got = classification.decode_distribution(logits, centres, "mean", log_rebalance=log_w, correction=1.0)
    torch.testing.assert_close(got.flatten(), want, atol=1e-4, rtol=1e-4)
    raw = classification.decode_distribution(logits, centres, "mean")
    assert (raw.flatten() - want).abs().max() > 1  # uncorrected, the mean is off
    half = classification.decode_distribution(logits, centres, "mean", log_rebalance=log_w, correction=0.5)
    assert 0 < (half.flatten() - want).norm() < (raw.flatten() - want).norm()
    with pytest.raises(ValueError, match="no rebalancing weights"):
        classification.decode_distribution(logits, centres, correction=0.5)


def test_engine_records_its_rebalancing_weights_and_decoding_defaults(tmp_path):
    import numpy as np

    from engines.metrics import ab_bin_index
    from engines.models import checkpoint
    from engines.pipeline import load_colorizer
    from engines.runtime.backends import select_backend
    from tests.test_training import _make_folder, _tiny_config
    from training.decoding import set_decoding
    from training.loop import train

    folder = _make_folder(tmp_path / "imgs", n_colour=30, n_gray=0)
    cfg = _tiny_config(folder, tmp_path, family="classification", rebalance_lambda=0.5)
    train(cfg, tmp_path / "run")
    engine = checkpoint.load(tmp_path / "run" / "engine.pt")
    state = engine.family_state
    assert state["log_rebalance"].shape == (len(state["ab_centres"]),)
    assert state["log_rebalance"].std() > 0.1  # rare bins weigh more than common ones
    set_decoding(tmp_path / "run" / "engine.pt", tmp_path / "tuned.pt", temperature=0.6, correction=0.7)
    tuned = checkpoint.load(tmp_path / "tuned.pt").family_state
    assert (tuned["temperature"], tuned["correction"]) == (0.6, 0.7)
    torch.testing.assert_close(tuned["log_rebalance"].float(), state["log_rebalance"].float(), atol=1e-2, rtol=0)
    assert int(ab_bin_index(state["ab_centres"].T[None, :, :, None]).unique().numel()) == len(state["ab_centres"])

    photo = np.random.default_rng(0).random((40, 56, 3), dtype=np.float32)
    backend = select_backend("cpu")
    recorded = load_colorizer("custom", backend, weights=tmp_path / "tuned.pt").colorize(photo)
    explicit = load_colorizer(
        "custom", backend, weights=tmp_path / "run" / "engine.pt", temperature=0.6, correction=0.7
    )
    np.testing.assert_allclose(recorded, explicit.colorize(photo), atol=2e-3)
    zhang = load_colorizer("custom", backend, weights=tmp_path / "tuned.pt", correction=0.0).colorize(photo)
    assert np.abs(zhang - recorded).max() > 1e-3
    with pytest.raises(ValueError, match="has no decoding"):
        regression = _tiny_config(folder, tmp_path)
        train(regression, tmp_path / "reg")
        set_decoding(tmp_path / "reg" / "engine.pt", tmp_path / "x.pt", 0.5, 0.5)
