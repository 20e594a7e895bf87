import numpy as np
import pytest
import torch

from training.config import from_dict
from training.degrade import _gaussian_blur, degrade_lightness, step_generator


def test_off_is_the_input_and_the_same_step_draws_the_same():
    x = torch.rand(16, 1, 24, 24)
    assert torch.equal(degrade_lightness(x, 0.0, step_generator(0, 3)), x)
    a, b = (degrade_lightness(x, 1.0, step_generator(0, 3)) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, degrade_lightness(x, 1.0, step_generator(0, 4)))
    assert not torch.equal(a, degrade_lightness(x, 1.0, step_generator(1, 3)))


def test_the_share_degraded_follows_the_probability_and_values_stay_in_range():
    x = torch.rand(800, 1, 16, 16)
    for p, expected in ((0.5, 0.5 * 7 / 8), (1.0, 7 / 8)):  # each image: none of the three with chance 1/8
        y = degrade_lightness(x, p, step_generator(0, 0))
        changed = (y != x).flatten(1).any(1).float().mean().item()
        assert abs(changed - expected) < 0.06, (p, changed)
        assert y.min() >= 0 and y.max() <= 1


def test_blur_is_a_normalised_gaussian_of_each_images_own_width():
    impulse = torch.zeros(2, 1, 21, 21)
    impulse[:, :, 10, 10] = 1
    sigma = torch.tensor([1.0, 1.5])  # wide enough that the sampled kernel's variance is sigma ** 2
    y = _gaussian_blur(impulse, sigma, radius=6)
    t = torch.arange(21.0) - 10
    for i in range(2):
        assert y[i].sum().item() == pytest.approx(1.0, abs=1e-5)
        row = y[i, 0].sum(0)  # the horizontal profile
        assert (row * t**2).sum().item() == pytest.approx(sigma[i].item() ** 2, rel=0.05)
    flat = _gaussian_blur(torch.full((1, 1, 12, 12), 0.3), torch.tensor([1.0]), radius=3)
    torch.testing.assert_close(flat, torch.full_like(flat, 0.3))


def test_recipes_refuse_a_share_outside_0_to_1_and_the_classifier():
    assert from_dict({"family": "classification", "degrade_input": 0.5}).degrade_input == 0.5
    with pytest.raises(ValueError, match="degrade_input must be a share"):
        from_dict({"family": "regression", "degrade_input": 1.5})
    with pytest.raises(ValueError, match="colour families"):
        from_dict({"family": "classifier", "degrade_input": 0.5})


def test_old_print_is_a_repeatable_darker_flatter_gray():
    from benchmarks.quality import gray_of, old_print

    rgb = np.random.default_rng(0).random((40, 60, 3)).astype(np.float32)
    a, b, c = old_print(rgb, "x"), old_print(rgb, "x"), old_print(rgb, "y")
    assert a.shape == rgb.shape and np.array_equal(a, b) and not np.array_equal(a, c)  # grain seeded by name
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    clean = gray_of(rgb)
    assert a.mean() < clean.mean() - 0.02 and a.std() < clean.std()


def test_shares_of_a_batch_are_degraded_as_the_whole_batch_would_be():
    x = torch.rand(8, 1, 16, 16)
    whole = degrade_lightness(x, 1.0, step_generator(0, 5))
    halves = [degrade_lightness(x[i * 4 : i * 4 + 4], 1.0, step_generator(0, 5), first=i * 4, total=8) for i in (0, 1)]
    torch.testing.assert_close(torch.cat(halves), whole)
