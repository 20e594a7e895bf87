"""Zhang et al.'s classification machinery: bins, soft encoding, annealed-mean decoding."""

import pytest
import torch

from engines import classification
from engines.metrics import AB_GRID, ab_histogram


def _centres() -> torch.Tensor:
    ab = torch.stack(torch.meshgrid(torch.linspace(-60, 60, 25), torch.linspace(-40, 80, 25), indexing="ij"))
    return classification.bin_centres(ab_histogram(ab[None]))


def test_bin_centres_are_the_occupied_grid_cells():
    prior = torch.zeros(AB_GRID * AB_GRID)
    prior[0] = 3  # a in [-110, -100), b in [-110, -100)
    prior[AB_GRID + 2] = 1  # a in [-100, -90), b in [-90, -80)
    torch.testing.assert_close(classification.bin_centres(prior), torch.tensor([[-105.0, -105.0], [-95.0, -85.0]]))


def test_soft_encoding_sums_to_one_over_five_nearest_bins():
    centres = _centres()
    ab = torch.tensor([[3.0, 7.0], [-55.0, 42.0]]).T.reshape(1, 2, 1, 2)
    t = classification.soft_encode(ab, centres)
    assert t.shape == (1, len(centres), 1, 2)
    torch.testing.assert_close(t.sum(1), torch.ones(1, 1, 2))
    assert ((t > 0).sum(1) == 5).all()
    # The nearest bin gets the most mass.
    nearest = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2), centres).argmin(1)
    assert (t.permute(0, 2, 3, 1).reshape(-1, len(centres)).argmax(1) == nearest).all()


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
