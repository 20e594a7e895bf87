"""benchmarks.film_frames writes a colour film's sampled frames as the film pipeline reads them, and skips
black-and-white films."""

from fractions import Fraction

import cv2
import numpy as np

from benchmarks.film_frames import main
from tests.test_training import _colourful
from tests.test_video import make_clip


def test_colour_frames_are_written_about_once_a_second_and_gray_films_skipped(tmp_path, capsys):
    rng = np.random.default_rng(3)
    colour = [np.ascontiguousarray(cv2.resize(_colourful(rng, 16), (80, 48))[:, :, ::-1]) for _ in range(60)]
    films = tmp_path / "films"
    films.mkdir()
    make_clip(films / "colour.mp4", frames=colour, size=(80, 48), rate=Fraction(24))
    gray = [np.repeat(f.mean(2, keepdims=True).astype(np.uint8), 3, 2) for f in colour[:30]]
    make_clip(films / "gray.mp4", frames=gray, size=(80, 48), rate=Fraction(24))
    (films / "notes.txt").write_text("not a film")

    assert main([str(films), "--out", str(tmp_path / "out")]) == 0
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    # 60 frames at 24 fps are 2.5 s: frames at 0, 1 and 2 s; nothing of the gray film.
    assert files == ["colour-000000.png", "colour-000024.png", "colour-000048.png"]
    for name in files:
        got = cv2.imread(str(tmp_path / "out" / name))[:, :, ::-1].astype(int)
        want = colour[int(name[-10:-4])]
        assert got.shape == (48, 80, 3) and np.abs(got - want).mean() < 6  # full size, the frame asked for
    assert "3 frames of 2 films" in capsys.readouterr().out


def test_no_colour_frames_or_an_unreadable_film_is_a_one_line_error(tmp_path, capsys):
    gray = [np.full((48, 80, 3), 100, np.uint8) for _ in range(10)]
    make_clip(tmp_path / "gray.mp4", frames=gray, size=(80, 48), rate=Fraction(24))
    assert main([str(tmp_path / "gray.mp4"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no colour frames in {tmp_path / 'gray.mp4'}"

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    assert main([str(broken), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {broken}: ")
