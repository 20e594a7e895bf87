"""benchmarks.shipping: the shipping rule's comparisons, and a whole run on small photos."""

import cv2
import numpy as np
import pytest

from benchmarks.shipping import FIGURES, _write_once, losses, main, off_band, tuning_sets
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


def test_a_copy_of_the_shipped_engine_passes_and_the_sets_are_reused(tmp_path, capsys):
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
    assert rows and rows[-1].endswith("| passes |")
    assert rows[-1].count("|") == 3 + len(found)  # the label, a cell for every set, the verdict
