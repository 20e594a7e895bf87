"""The shipping rule: does a candidate replace a shipped engine? One command, the project's three tuning
sets, one verdict per candidate (the rule sessions 11-17 applied by hand).

    python -m benchmarks.shipping regression RUN/engine.pt [SOUP.pt ...]
    python -m benchmarks.shipping classification CANDIDATE.pt --decodings 0.4,0.45 0.5,0.5 ...

Tuning sets (never the photos the project reports, BSDS 100-199):
- ``bsds``: photos-dev 0-99 (BSDS500 train, 3:2);
- ``tiny``: the campaign recipe's held-out Tiny ImageNet images, every 5th (391; ``benchmarks.holdout``);
- ``davis``: the davis films' first frame and one a second (23, 16:9; ``benchmarks.film_frames``);
- ``bsds-worn``: photos-dev 0-99 again, each coloured from its gray made a worn print's
  (``benchmarks.quality.old_print``: tone, blur, grain, JPEG) and scored against the clean photo: what
  people colour are old prints and scans, not clean lightness channels.
Tiny and davis are written under ``--sets`` on first use, from the data folder.

A candidate, at one of its decodings (classification: ``T,C`` pairs; other families: as saved), passes
when on every set it loses none of the figures below against the shipped engine at the shipped
decoding, a difference within the tie counting as no loss. Passing is necessary, not sufficient: look
at the candidates side by side before shipping one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from benchmarks import ROOT, film_frames, holdout
from benchmarks.quality import evaluate, load_photos, old_print, originals_colourfulness
from engines.evaluation.scoring import training_prior
from engines.metrics import rebalance_weights
from engines.models import checkpoint
from engines.models.registry import ENGINES
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend

DATA = ROOT.parent / "shared" / "data"
CAMPAIGN_RECIPE = ROOT / "training" / "recipes" / "campaign-classification.toml"
COLOUR_BAND = (0.8, 1.1)  # issue 16's colourfulness target, as a fraction of the originals'

# (figure, which way is better, tie). Colourfulness counts by its ratio's distance from the band.
FIGURES = (
    ("auc", "higher", 0.02),
    ("auc_rebal", "higher", 0.02),
    ("green_a", "lower", 0.1),
    ("false_colour", "lower", 0.2),
    ("colour_off_band", "lower", 0.01),
)


def off_band(ratio: float, band: tuple[float, float] = COLOUR_BAND) -> float:
    """How far a colourfulness ratio lies outside the band (0 inside it)."""
    return max(band[0] - ratio, ratio - band[1], 0.0)


def losses(candidate: dict[str, float], shipped: dict[str, float]) -> list[str]:
    """The figures on which ``candidate`` is worse than ``shipped`` by more than the tie."""
    lost = []
    for key, better, tie in FIGURES:
        gain = candidate[key] - shipped[key] if better == "higher" else shipped[key] - candidate[key]
        if gain < -tie:
            lost.append(key)
    return lost


def tuning_sets(data: Path, sets: Path) -> dict[str, tuple[Path, int, int, bool]]:
    """Each set's folder, first photo, count and whether its inputs are worn prints; the derived sets are
    written once under ``sets``."""
    tiny, frames = sets / "tiny-val", sets / "film-frames"
    _write_once(tiny, lambda out: holdout.export(CAMPAIGN_RECIPE, out, source_contains="tiny-imagenet", every=5))
    _write_once(frames, lambda out: film_frames.export(film_frames.films_in(data / "video-dev"), out))
    bsds = data / "photos-dev"
    return {
        "bsds": (bsds, 0, 100, False),
        "tiny": (tiny, 0, 400, False),
        "davis": (frames, 0, 23, False),
        "bsds-worn": (bsds, 0, 100, True),
    }


def _write_once(folder: Path, export) -> None:
    """Export into a scratch folder renamed when complete, so that an interrupted export is not reused."""
    if folder.is_dir():
        return
    scratch = folder.with_name(folder.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    export(scratch)
    scratch.rename(folder)


def score(colorize, one_set: tuple, weights: torch.Tensor) -> dict:
    """A set's figures: ``one_set`` is (photos, their colourfulness, the inputs coloured or None: the photos)."""
    photos, true_colourful, inputs = one_set
    r, _ = evaluate(colorize, photos, weights, inputs)
    r["colour_ratio"] = r["colourfulness"] / true_colourful
    r["colour_off_band"] = off_band(r["colour_ratio"])
    return r


def _decodings(pairs: list[str]) -> list[dict[str, float]]:
    """``["0.5,0.45", ...]`` -> classification decoding options; ValueError names a malformed pair."""
    out = []
    for pair in pairs:
        try:
            t, c = (float(x) for x in pair.split(","))
        except ValueError:
            raise ValueError(f"--decodings takes T,C pairs such as 0.5,0.45, got {pair!r}") from None
        out.append({"temperature": t, "correction": c})
    return out


def _row(label: str, per_set: dict[str, dict], verdict: str) -> str:
    cells = [
        f"{r['auc']:.2f} / {r['auc_rebal']:.2f} / {r['colour_ratio']:.2f} / {r['green_a']:+.1f} / {r['false_colour']:.1f}"
        for r in per_set.values()
    ]
    return f"| {label} | " + " | ".join(cells) + f" | {verdict} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", choices=list(ENGINES), help="the shipped engine the candidates would replace")
    p.add_argument("candidates", nargs="+", type=Path, help="engine files (training runs' engine.pt, soups)")
    p.add_argument("--decodings", nargs="*", default=[], help="classification: T,C pairs to try for each candidate")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--sets", type=Path, default=Path("~/.cache/colorize/tuning").expanduser())
    args = p.parse_args(argv)
    try:
        decodings = _decodings(args.decodings)
    except ValueError as e:
        p.error(str(e))
    for path in args.candidates:
        if not path.is_file():
            p.error(f"no engine file {path}")

    torch.set_num_threads(2)
    weights = rebalance_weights(training_prior(), lam=0.0)
    backend = select_backend("cpu")
    sets = {}
    loaded: dict[tuple, dict] = {}  # the worn set is the BSDS set's photos again: read them once
    for name, (folder, start, limit, worn) in tuning_sets(args.data, args.sets).items():
        if (folder, start, limit) not in loaded:
            loaded[folder, start, limit] = load_photos(folder, start, limit)
        photos = loaded[folder, start, limit]
        inputs = {n: old_print(rgb, n) for n, rgb in photos.items()} if worn else None
        sets[name] = (photos, originals_colourfulness(photos), inputs)

    shipped_c = load_colorizer(args.engine, backend)
    shipped = {name: score(shipped_c.colorize, one, weights) for name, one in sets.items()}
    lines = [
        "| engine | "
        + " | ".join(f"{s}: plain / rebal. / colour ratio / green a* / false %" for s in sets)
        + " | verdict |",
        "|---|" + "---|" * (len(sets) + 1),
        _row(f"shipped `{args.engine}`", shipped, ""),
    ]
    print(lines[-1], flush=True)
    for path in args.candidates:
        family = checkpoint.load(path).family
        for options in decodings if family == "classification" and decodings else [{}]:
            c = load_colorizer("custom", backend, weights=path, **options)
            per_set = {name: score(c.colorize, one, weights) for name, one in sets.items()}
            lost = [f"{name} {key}" for name in sets for key in losses(per_set[name], shipped[name])]
            label = f"{path}" + "".join(f", {k[0].upper()} {v:g}" for k, v in options.items())
            lines.append(_row(label, per_set, "passes" if not lost else "loses " + ", ".join(lost)))
            print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
