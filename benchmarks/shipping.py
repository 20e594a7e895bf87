"""The shipping rule: does a candidate replace a shipped engine? One command, the project's four tuning
sets, one verdict per candidate (the rule sessions 11-17 applied by hand, made noise-aware).

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
when on no set it significantly loses any of the figures below against the shipped engine at the shipped
decoding, and significantly wins at least one. Significant: the difference lies beyond the figure's tie
and the 90 % interval of its paired bootstrap over the set's photos (1,000 resamples, the same photos for
both engines) lies wholly on that side. False colour and green a* are measured on the few neutral or
green pixels of ~100 photos, so a difference inside the photos' sampling noise is no loss; such losses
by the tie alone are listed as "within noise". Passing is necessary, not sufficient: look at the
candidates side by side before shipping one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from benchmarks import ROOT, film_frames, holdout
from benchmarks.quality import PhotoParts, evaluate, load_photos, old_print, photos_colourfulness
from engines.evaluation.scoring import training_prior
from engines.metrics import AbErrorCurve, ColourFidelity, rebalance_weights
from engines.models import checkpoint
from engines.models.registry import ENGINES
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend

DATA = ROOT.parent / "shared" / "data"
CAMPAIGN_RECIPE = ROOT / "training" / "recipes" / "campaign-classification.toml"
COLOUR_BAND = (0.8, 1.1)  # issue 16's colourfulness target, as a fraction of the originals'
RESAMPLES, SEED = 1000, 0  # the paired bootstrap over a set's photos; every candidate gets the same resamples

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


def gain(better: str, candidate: float, shipped: float) -> float:
    """How much better ``candidate`` is on a figure where ``better`` ("higher" or "lower") is better."""
    return candidate - shipped if better == "higher" else shipped - candidate


def losses(candidate: dict[str, float], shipped: dict[str, float]) -> list[str]:
    """The figures on which ``candidate`` is worse than ``shipped`` by more than the tie."""
    return [key for key, better, tie in FIGURES if gain(better, candidate[key], shipped[key]) < -tie]


def pooled(parts: list[PhotoParts], true_colourful: np.ndarray, idx) -> dict[str, float]:
    """The FIGURES of the photos ``idx`` (a photo drawn twice counts twice), pooled as ``evaluate`` pools
    a set: ``idx`` all photos once gives the set's own figures."""
    curve, fidelity = AbErrorCurve(), ColourFidelity()
    for i in idx:
        curve.merge(parts[i].curve)
        fidelity.merge(parts[i].fidelity)
    ratio = np.mean([parts[i].colourfulness for i in idx]) / np.mean(true_colourful[idx])
    return {
        "auc": curve.auc(),
        "auc_rebal": curve.auc_rebalanced(),
        "green_a": fidelity.green_a(),
        "false_colour": fidelity.false_colour_share(),
        "colour_off_band": off_band(ratio),
    }


def bootstrap_gains(
    candidate: dict[str, PhotoParts],
    shipped: dict[str, PhotoParts],
    true_colourful: dict[str, float],
    rng: np.random.Generator,
    resamples: int = RESAMPLES,
) -> dict[str, tuple[float, float, float]]:
    """Each figure's gain of ``candidate`` over ``shipped`` on one set (positive: the candidate is better),
    as (observed, 5th percentile, 95th percentile) of its paired bootstrap over the set's photos: each
    resample draws the photos with replacement, the same for both engines and every figure. A resample
    where a figure is NaN (no green pixel drawn, say) is left out of that figure's percentiles."""
    names = list(true_colourful)
    cand, ship = [candidate[n] for n in names], [shipped[n] for n in names]
    true = np.array([true_colourful[n] for n in names])

    def gains(idx) -> dict[str, float]:
        c, s = pooled(cand, true, idx), pooled(ship, true, idx)
        return {key: gain(better, c[key], s[key]) for key, better, _ in FIGURES}

    observed = gains(range(len(names)))
    draws = [gains(rng.integers(0, len(names), len(names))) for _ in range(resamples)]
    out = {}
    for key, _, _ in FIGURES:
        values = [d[key] for d in draws if not np.isnan(d[key])]
        low, high = np.percentile(values, [5, 95]) if values else (float("nan"), float("nan"))
        out[key] = (observed[key], float(low), float(high))
    return out


def significant(gains: dict[str, tuple[float, float, float]]) -> tuple[list[str], list[str]]:
    """The figures significantly lost and won: beyond the tie, with the bootstrap's 90 % interval wholly
    on that side of 0."""
    lost = [key for key, _, tie in FIGURES if gains[key][0] < -tie and gains[key][2] < 0]
    won = [key for key, _, tie in FIGURES if gains[key][0] > tie and gains[key][1] > 0]
    return lost, won


def verdict(lost: list[str], won: list[str], within_noise: list[str]) -> str:
    """A row's verdict from its significant losses and wins and its losses by the tie alone that are not
    significant (each "set figure")."""
    if lost:
        text = "fails: loses " + ", ".join(lost)
    else:
        text = "passes" if won else "fails: no significant win"
    return text + (f" (within noise: {', '.join(within_noise)})" if within_noise else "")


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


def score(colorize, one_set: tuple, weights: torch.Tensor) -> tuple[dict, dict[str, PhotoParts]]:
    """A set's figures and each photo's parts of them: ``one_set`` is (photos, each one's colourfulness,
    the inputs coloured or None: the photos)."""
    photos, true_colourful, inputs = one_set
    parts: dict[str, PhotoParts] = {}
    r, _ = evaluate(colorize, photos, weights, inputs, parts)
    r["colour_ratio"] = r["colourfulness"] / float(np.mean(list(true_colourful.values())))
    r["colour_off_band"] = off_band(r["colour_ratio"])
    return r, parts


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
        sets[name] = (photos, photos_colourfulness(photos), inputs)

    shipped_c = load_colorizer(args.engine, backend)
    shipped, shipped_parts = {}, {}
    for name, one in sets.items():
        shipped[name], shipped_parts[name] = score(shipped_c.colorize, one, weights)
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
            per_set, lost, won, tie_lost = {}, [], [], []
            for name, one in sets.items():
                per_set[name], parts = score(c.colorize, one, weights)
                true_colourful = one[1]
                gains = bootstrap_gains(parts, shipped_parts[name], true_colourful, np.random.default_rng(SEED))
                set_lost, set_won = significant(gains)
                lost += [f"{name} {key}" for key in set_lost]
                won += [f"{name} {key}" for key in set_won]
                tie_lost += [f"{name} {key}" for key in losses(per_set[name], shipped[name])]
            within_noise = [x for x in tie_lost if x not in lost]
            label = f"{path}" + "".join(f", {k[0].upper()} {v:g}" for k, v in options.items())
            lines.append(_row(label, per_set, verdict(lost, won, within_noise)))
            print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
