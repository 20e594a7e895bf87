"""benchmarks.shipping: the shipping rule's comparisons, and a whole run on small photos."""

import math

import cv2
import numpy as np
import pytest
import torch

from benchmarks.quality import PhotoParts, evaluate, load_photos, photos_colourfulness
from benchmarks.shipping import (
    FIGURES,
    _write_once,
    bootstrap_gains,
    losses,
    main,
    off_band,
    pooled,
    significant,
    tuning_sets,
    verdict,
)
from engines.evaluation.scoring import training_prior
from engines.metrics import AbErrorCurve, ColourFidelity, rebalance_weights
from engines.models.registry import get_spec
from tests.test_training import _colourful

SHIPPED = {"auc": 88.0, "auc_rebal": 76.0, "green_a": 0.5, "false_colour": 5.0, "colour_off_band": 0.05}


def test_colourfulness_counts_by_its_distance_from_the_band():
    assert off_band(0.8) == 0 and off_band(0.95) == 0 and off_band(1.1) == 0
    assert off_band(0.74) == pytest.approx(0.06)
    assert off_band(1.25) == pytest.approx(0.15)


def test_each_figure_is_lost_only_beyond_its_tie_and_in_its_own_direction():
    assert losses(dict(SHIPPED), SHIPPED) == []
    for key, better, tie in FIGURES:
        worse = -1 if better == "higher" else 1
        assert losses({**SHIPPED, key: SHIPPED[key] + worse * tie * 0.5}, SHIPPED) == []  # a tie
        assert losses({**SHIPPED, key: SHIPPED[key] + worse * tie * 3}, SHIPPED) == [key]
        assert losses({**SHIPPED, key: SHIPPED[key] - worse * tie * 3}, SHIPPED) == []  # a gain
    # A paler candidate inside the band no longer loses to a more colourful one outside it.
    assert losses({**SHIPPED, "colour_off_band": 0.0}, SHIPPED) == []


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["regression", str(tmp_path / "missing.pt")])
    assert e.value.code == 2 and "no engine file" in capsys.readouterr().err
    shipped = str(get_spec("regression").weights_path())
    with pytest.raises(SystemExit) as e:
        main(["classification", shipped, "--decodings", "0.5"])
    assert e.value.code == 2 and "T,C pairs" in capsys.readouterr().err


def test_an_interrupted_export_is_not_taken_for_a_set(tmp_path):
    calls = []

    def export(out):
        calls.append(out)
        out.mkdir()
        (out / "a.png").write_bytes(b"")
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _write_once(tmp_path / "set", export)
    assert not (tmp_path / "set").exists()
    _write_once(tmp_path / "set", export)
    _write_once(tmp_path / "set", export)  # complete: not written again
    assert len(calls) == 2 and (tmp_path / "set" / "a.png").exists()


def _photos(folder, n, rng, shape):
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.resize(_colourful(rng, 48), shape[::-1]))


def test_a_copy_of_the_shipped_engine_wins_nothing_and_the_sets_are_reused(tmp_path, capsys):
    rng = np.random.default_rng(3)
    data, sets = tmp_path / "data", tmp_path / "sets"
    _photos(data / "photos-dev", 3, rng, (64, 96))
    _photos(sets / "tiny-val", 2, rng, (64, 64))
    _photos(sets / "film-frames", 2, rng, (54, 96))
    found = tuning_sets(data, sets)  # already written: nothing is exported (no shared data needed)
    assert {k: v[0] for k, v in found.items()} == {
        "bsds": data / "photos-dev",
        "tiny": sets / "tiny-val",
        "davis": sets / "film-frames",
        "bsds-worn": data / "photos-dev",  # the same photos, coloured from worn prints' grays
    }
    assert [k for k, v in found.items() if v[3]] == ["bsds-worn"]

    shipped = str(get_spec("regression").weights_path())
    assert main(["regression", shipped, "--data", str(data), "--sets", str(sets)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {shipped}")]
    assert rows and rows[-1].endswith("| fails: no significant win |")  # and loses nothing
    assert rows[-1].count("|") == 3 + len(found)  # the label, a cell for every set, the verdict


# The paired bootstrap, on photos given by their parts: every photo has 100 truly neutral pixels (of which
# ``strong`` are coloured strongly), 50 truly green ones (predicted a* ``green``), 100 pixels off by ``error``
# in ab, and the originals' colourfulness.


def _part(strong=5, green=-10.0, error=10, colourful=30.0) -> PhotoParts:
    curve, fidelity = AbErrorCurve(), ColourFidelity()
    curve.plain[error] = curve.rebalanced[error] = 100
    fidelity.neutral_pixels, fidelity.neutral_strong = 100, strong
    fidelity.green_pixels, fidelity.green_a_sum, fidelity.green_a_true_sum = 50, 50 * green, 50 * -20.0
    return PhotoParts(curve, fidelity, colourful)


def _photos_of(parts):
    return {f"{i:03d}": p for i, p in enumerate(parts)}


TRUE = {f"{i:03d}": 30.0 for i in range(60)}  # originals' colourfulness: every candidate inside the band


def test_an_identical_candidate_gains_nothing_and_fails_for_want_of_a_win():
    shipped = _photos_of(_part(strong=i % 7, error=5 + i % 9) for i in range(60))
    gains = bootstrap_gains(dict(shipped), shipped, TRUE, np.random.default_rng(0), resamples=200)
    assert gains == {key: (0.0, 0.0, 0.0) for key, _, _ in FIGURES}
    assert significant(gains) == ([], [])
    assert verdict([], [], []) == "fails: no significant win"


def test_false_colour_worse_on_every_photo_is_a_significant_loss():
    shipped = _photos_of(_part(strong=i % 7) for i in range(60))
    candidate = _photos_of(_part(strong=i % 7 + 3) for i in range(60))  # 3 points more on each photo
    gains = bootstrap_gains(candidate, shipped, TRUE, np.random.default_rng(0), resamples=200)
    observed, low, high = gains["false_colour"]
    assert observed == pytest.approx(-3.0) and low == pytest.approx(-3.0) and high == pytest.approx(-3.0)
    assert significant(gains) == (["false_colour"], [])
    assert verdict(["bsds false_colour"], [], []) == "fails: loses bsds false_colour"


def test_a_loss_on_one_photo_of_many_is_within_noise():
    # One photo of 50 coloured strongly all over its neutral pixels: 2 points more false colour pooled, ten
    # times the tie; but a third of the resamples leave that photo out, so the interval reaches 0. Every
    # photo is 5 units closer in ab: a clear win.
    shipped = _photos_of(_part(strong=0, error=20) for _ in range(50))
    candidate = _photos_of(_part(strong=100 if i == 0 else 0, error=15) for i in range(50))
    true = {n: 30.0 for n in shipped}
    gains = bootstrap_gains(candidate, shipped, true, np.random.default_rng(0), resamples=300)
    observed, low, high = gains["false_colour"]
    assert observed == pytest.approx(-2.0) and low < -2.0 and high == 0.0
    assert gains["auc"] == pytest.approx((500 / 151,) * 3)  # (151 - 15) - (151 - 20) of 151 thresholds, x100
    assert losses(
        pooled(list(candidate.values()), np.full(50, 30.0), range(50)),
        pooled(list(shipped.values()), np.full(50, 30.0), range(50)),
    ) == ["false_colour"]  # the tie alone calls it a loss
    lost, won = significant(gains)
    assert lost == [] and won == ["auc", "auc_rebal"]
    assert verdict([], ["bsds auc"], ["bsds false_colour"]) == "passes (within noise: bsds false_colour)"


def test_a_resample_without_green_pixels_is_left_out_and_the_bootstrap_is_reproducible():
    shipped = [_part(strong=i % 4, green=-10.0) for i in range(20)]
    candidate = [_part(strong=i % 5, green=-4.0 - i % 3) for i in range(20)]
    for p in shipped[1:] + candidate[1:]:  # only the first photo has green pixels
        p.fidelity.green_pixels = 0
        p.fidelity.green_a_sum = p.fidelity.green_a_true_sum = 0.0
    shipped, candidate, true = _photos_of(shipped), _photos_of(candidate), {f"{i:03d}": 30.0 for i in range(20)}
    once = bootstrap_gains(candidate, shipped, true, np.random.default_rng(5), resamples=100)
    assert once == bootstrap_gains(candidate, shipped, true, np.random.default_rng(5), resamples=100)
    assert once != bootstrap_gains(candidate, shipped, true, np.random.default_rng(6), resamples=100)
    assert once["green_a"] == (-6.0, -6.0, -6.0)  # NaN where the first photo is not drawn: left out
    assert all(not math.isnan(x) for gains in once.values() for x in gains)


def test_the_parts_pool_to_the_figures_evaluate_reports(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), _colourful(rng, 40))
    photos = load_photos(tmp_path, 0, 4)
    weights = rebalance_weights(training_prior(), lam=0.0)

    def colorize(rgb):  # a tinted, paler copy of the photo: every figure away from its best
        return np.clip(0.6 * rgb + 0.4 * rgb.mean(-1, keepdims=True) + [0.08, 0.0, -0.05], 0, 1).astype(np.float32)

    parts = {}
    figures, _ = evaluate(colorize, photos, weights, None, parts)
    true = photos_colourfulness(photos)
    assert list(parts) == list(photos)
    again = pooled(list(parts.values()), np.array(list(true.values())), range(4))
    ratio = figures["colourfulness"] / np.mean(list(true.values()))
    assert again == {
        "auc": figures["auc"],
        "auc_rebal": figures["auc_rebal"],
        "green_a": figures["green_a"],
        "false_colour": figures["false_colour"],
        "colour_off_band": off_band(ratio),
    }
    assert not any(math.isnan(v) for v in again.values()) and again["colour_off_band"] > 0
    assert all(isinstance(p.curve.plain, torch.Tensor) and p.curve.plain.sum() == 40 * 40 for p in parts.values())
