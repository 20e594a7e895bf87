"""Frames of colour films written out as PNG files at full size, a tuning set of film frames for
``python -m benchmarks.quality --photos DIR``: engines are chosen on photos, and a photo set can miss what
films show (session 11: a candidate that passed both photo sets cast whole davis frames orange-brown).

    python -m benchmarks.film_frames ../shared/data/video-dev --out DIR [--per-second 1]

Each film (a file, or every film in a folder) gives its first frame and then about ``--per-second`` frames
a second of its timestamps (``engines.video.streams.sample_frames``), converted to RGB as the film
pipeline reads them. Frames without colour (black-and-white films: nothing to score against) are skipped
with the training data's own test (``training.data.chroma_p95``). Files are named ``<film stem>-<frame
index>.png``, so the same films always give the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

from engines.video.streams import VideoError, is_video, sample_frames
from training.data import GRAY_CHROMA_P95, chroma_p95


def films_in(path: Path) -> list[Path]:
    """``path`` itself, or the films directly in a folder, sorted by name."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and is_video(p))
    return [path]


def export(films: list[Path], out: Path, per_second: float = 1.0) -> list[Path]:
    """Write the sampled colour frames of ``films`` under ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for film in films:
        try:
            for index, rgb in sample_frames(film, per_second):
                if chroma_p95(cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_AREA)[None])[0] < GRAY_CHROMA_P95:
                    continue
                path = out / f"{film.stem}-{index:06d}.png"
                cv2.imwrite(str(path), rgb[:, :, ::-1])
                written.append(path)
        except VideoError as e:
            raise VideoError(f"{film}: {e}") from e
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("films", type=Path, nargs="+", help="films, or folders of films")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-second", type=float, default=1.0, help="frames kept per second of each film")
    args = p.parse_args(argv)
    if args.per_second <= 0:
        p.error("--per-second must be above 0")
    films = [f for path in args.films for f in films_in(path)]
    try:
        written = export(films, args.out, args.per_second)
    except VideoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not written:
        print("error: no colour frames in " + ", ".join(str(f) for f in args.films), file=sys.stderr)
        return 2
    print(f"{len(written)} frames of {len(films)} films written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
