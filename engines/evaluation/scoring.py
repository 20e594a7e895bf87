"""Comparing coloured results with their ground truth: the numbers behind ``colorize eval``.

Pairs files by relative path (extension ignored), scores each pair and pools the set:
- AuC of the cumulative ab-error curve (thresholds 0..150), plain and class-rebalanced with the
  training-set prior (lambda 0), pooled over all pixels (Zhang et al. 2016);
- PSNR (dB, RGB, peak 1) and SSIM (Gaussian window, RGB), mean over images;
- CIEDE2000, mean over images of the per-image mean;
- colourfulness (Hasler and Suesstrunk 2003) of results and truth, and its gap two ways: the mean
  over images of |CF(result) - CF(truth)|, and |mean CF(results) - mean CF(truths)|;
- lightness error: mean |L(result) - L(truth)|;
- colour fidelity (``engines.metrics.ColourFidelity``), pooled over all pixels: the mean a* of the
  result on truly green pixels (lawns, trees), and the share of truly neutral pixels that the result
  colours strongly (false colour).

Videos (two films, or two folders of films paired the same way) are scored frame by frame with the
same per-image metrics, pooled over all frames of all videos (AuC over all pixels, the means over
frames), plus two temporal metrics per video, averaged over videos:
- warping error (Lai et al. 2018, ``engines.video.temporal``): flow and occlusion mask from each pair of
  consecutive *truth* frames; the squared RGB distance between result frame t and result frame t+1
  warped onto t, summed over channels and averaged over the non-occluded pixels and the pairs. Given
  for the truth too (its own warping error: what motion and occlusion leave even in a perfect film);
- CDC, colour distribution consistency (Liu et al. 2021, ``engines.metrics.ColourDistributionConsistency``):
  the Jensen-Shannon divergence of the per-channel 8-bit RGB histograms of frames 1, 2 and 4 apart;
  for the result and the truth.
With a classifier (``--classifier``; the project trains its own, see ``engines.models.resnet``), a realism
probe (``RealismProbe``): the classifier's top-1 agreement between each result and its truth, its
accuracy on both when the truth is filed in folders named after its classes, and a Frechet distance
between the results' and the truths' pooled classifier features (labelled with the classifier: it is
not FID). With ``--inception`` (the standard FID Inception weights, from a path the user supplies),
FID proper.
Frames are decoded with PyAV and streamed: only the current and previous frame pair are held.
Results and truth must have the same number of frames of the same size (``MismatchError``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import av
import numpy as np
import torch

from engines import color
from engines.media.crop import centre_square
from engines.media.formats import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from engines.media.photo_io import read_photo
from engines.metrics import (
    AbErrorCurve,
    ColourDistributionConsistency,
    ColourFidelity,
    ciede2000,
    colourfulness,
    psnr,
    rebalance_weights,
    ssim,
)
from engines.video.streams import decode_colorspace, is_video
from engines.video.temporal import pair_warping_error, reference_flow

PRIOR_FILE = "ab_prior.json"
# The realism probe's default classifier: trained here on Tiny ImageNet (``python -m training.classifier``).
DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[1] / "weights" / "classifier-tinyimagenet.pt"


class EvaluationError(ValueError):
    pass


class MismatchError(EvaluationError):
    """Result and truth cannot be compared: sizes or frame counts differ, or a photo meets a video."""


@dataclass
class PairScores:
    name: str
    psnr: float
    ssim: float
    ciede2000: float
    colourfulness: float
    colourfulness_true: float
    lightness_error: float


def training_prior() -> torch.Tensor:
    """The ab-bin histogram of the shipped engines' training set (see ``engines/weights/ab_prior.json``)."""
    text = (resources.files("engines") / "weights" / PRIOR_FILE).read_text()
    return torch.tensor(json.loads(text)["counts"], dtype=torch.float64)


def _media(folder: Path) -> dict[str, Path]:
    suffixes = set(IMAGE_SUFFIXES) | VIDEO_SUFFIXES
    return {
        str(p.relative_to(folder).with_suffix("")): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix.lower() in suffixes
    }


def pair_files(pred: Path, truth: Path) -> list[tuple[str, Path, Path]]:
    """Files or folders -> ``(name, result, truth)`` pairs. Every result needs its truth."""
    if pred.is_file() and truth.is_file():
        return [(pred.stem, pred, truth)]
    if not (pred.is_dir() and truth.is_dir()):
        raise EvaluationError("give two files or two folders")
    results, truths = _media(pred), _media(truth)
    missing = sorted(set(results) - set(truths))
    if missing:
        raise EvaluationError(f"{len(missing)} result(s) have no ground truth, e.g. {missing[0]}")
    if not results:
        raise EvaluationError(f"no images or videos in {pred}")
    return [(name, results[name], truths[name]) for name in results]


def _is_video(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return True
    return suffix not in IMAGE_SUFFIXES and is_video(path)


def split_pairs(pairs: list[tuple[str, Path, Path]]) -> tuple[list, list]:
    """``(photo pairs, video pairs)``; a video must be paired with a video, and one set holds one kind."""
    photos, videos = [], []
    for name, pred, true in pairs:
        kinds = _is_video(pred), _is_video(true)
        if kinds[0] != kinds[1]:
            raise MismatchError(f"{name}: the {'result' if kinds[0] else 'truth'} is a video and the other is not")
        (videos if kinds[0] else photos).append((name, pred, true))
    if photos and videos:
        raise MismatchError(f"give photos or videos, not both ({len(photos)} photo(s), {len(videos)} video(s))")
    return photos, videos


def _chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float64)).permute(2, 0, 1)


def score_images(
    name: str, pred: np.ndarray, true: np.ndarray, curve: AbErrorCurve, fidelity: ColourFidelity | None = None
) -> PairScores:
    """The per-image scores of a result against its truth, both RGB ``(H, W, 3)`` in [0, 1] (float, or
    uint8 meaning value / 255); the pixels' ab errors go into ``curve`` (and ``fidelity``)."""
    if pred.shape != true.shape:
        raise MismatchError(
            f"{name}: sizes differ ({pred.shape[1]}x{pred.shape[0]} vs {true.shape[1]}x{true.shape[0]})"
        )
    p, t = _chw(pred), _chw(true)
    if pred.dtype == np.uint8:
        p, t = p / 255, t / 255
    lab_p, lab_t = color.rgb_to_lab(p), color.rgb_to_lab(t)
    curve.update(lab_p[1:], lab_t[1:])
    if fidelity is not None:
        fidelity.update(lab_p[1:], lab_t[1:])
    return PairScores(
        name=name,
        psnr=float(psnr(p, t)),
        ssim=float(ssim(p[None], t[None])[0]),
        ciede2000=float(ciede2000(lab_p, lab_t).mean()),
        colourfulness=float(colourfulness(p)),
        colourfulness_true=float(colourfulness(t)),
        lightness_error=float((lab_p[0] - lab_t[0]).abs().mean()),
    )


_MEANS = ("psnr", "ssim", "ciede2000", "colourfulness", "colourfulness_true", "lightness_error")


class ScorePool:
    """Per-image scores pooled over a set of images or frames: running sums and the ab-error curve,
    so a long film costs no memory per frame."""

    def __init__(self, prior: torch.Tensor):
        self.curve = AbErrorCurve(rebalance_weights(prior, lam=0.0))
        self.fidelity = ColourFidelity()
        self.count = 0
        self._sums = dict.fromkeys(_MEANS, 0.0)
        self._cf_gap = 0.0

    def add(self, name: str, pred: np.ndarray, true: np.ndarray) -> PairScores:
        s = score_images(name, pred, true, self.curve, self.fidelity)
        self.count += 1
        for key in _MEANS:
            self._sums[key] += getattr(s, key)
        self._cf_gap += abs(s.colourfulness - s.colourfulness_true)
        return s

    def merge(self, other: ScorePool) -> None:
        self.curve.plain += other.curve.plain
        self.curve.rebalanced += other.curve.rebalanced
        self.fidelity.merge(other.fidelity)
        self.count += other.count
        for key in _MEANS:
            self._sums[key] += other._sums[key]
        self._cf_gap += other._cf_gap

    def summary(self) -> dict:
        """AuC pooled over all pixels, the other metrics averaged over images (see the module doc)."""
        n = max(self.count, 1)
        mean = {key: self._sums[key] / n for key in _MEANS}
        return {
            "auc": self.curve.auc(),
            "auc_rebalanced": self.curve.auc_rebalanced(),
            "psnr": mean["psnr"],
            "ssim": mean["ssim"],
            "ciede2000": mean["ciede2000"],
            "colourfulness": mean["colourfulness"],
            "colourfulness_true": mean["colourfulness_true"],
            "colourfulness_gap_per_image": self._cf_gap / n,
            "colourfulness_gap_of_means": abs(mean["colourfulness"] - mean["colourfulness_true"]),
            "lightness_error": mean["lightness_error"],
            "green_a": self.fidelity.green_a(),
            "green_a_truth": self.fidelity.green_a_true(),
            "false_colour_percent": self.fidelity.false_colour_share(),
        }


class RealismProbe:
    """Classifier-based figures over a set of (result, truth) images; see the module doc.

    ``networks``: label -> (feature function ``(N, 3, S, S) -> (N, D)``, logits function or None, input
    side S, class names). Images are centre-cropped to a square and area-resized to S, as the
    classifiers were trained.
    """

    def __init__(self, networks: dict):
        self.networks = networks
        self.features = {k: ([], []) for k in networks}
        self.agree = dict.fromkeys(networks, 0)
        self.correct = {k: [0, 0] for k in networks}  # (result, truth) right answers
        self.labelled = dict.fromkeys(networks, 0)
        self.count = 0

    @staticmethod
    def _square(rgb: np.ndarray, side: int) -> torch.Tensor:
        rgb = rgb.astype(np.float32) / 255 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
        crop = centre_square(rgb, side)
        return torch.from_numpy(np.clip(crop, 0, 1)).permute(2, 0, 1)[None]

    @torch.inference_mode()
    def add(self, name: str, pred: np.ndarray, true: np.ndarray) -> None:
        label = Path(name).parent.name
        for key, (features, logits, side, classes) in self.networks.items():
            x = torch.cat((self._square(pred, side), self._square(true, side)))
            f = features(x)
            self.features[key][0].append(f[0].double().numpy())
            self.features[key][1].append(f[1].double().numpy())
            if logits is not None:
                top = logits(f).argmax(1).tolist()
                self.agree[key] += top[0] == top[1]
                if label in classes:
                    self.labelled[key] += 1
                    self.correct[key][0] += top[0] == classes.index(label)
                    self.correct[key][1] += top[1] == classes.index(label)
        self.count += 1

    def summary(self) -> dict:
        from engines.metrics import feature_stats, frechet_distance

        out: dict = {}
        for key, (fp, ft) in self.features.items():
            if len(fp) >= 2:
                out[f"frechet_distance[{key}]"] = frechet_distance(*feature_stats(fp), *feature_stats(ft))
            if self.networks[key][1] is not None and self.count:
                out[f"top1_agreement[{key}]"] = 100.0 * self.agree[key] / self.count
                if self.labelled[key]:
                    out[f"accuracy[{key}]"] = 100.0 * self.correct[key][0] / self.labelled[key]
                    out[f"accuracy_truth[{key}]"] = 100.0 * self.correct[key][1] / self.labelled[key]
        return out


def realism_networks(classifier: Path | None, inception: Path | None) -> dict:
    """The networks a ``RealismProbe`` runs: our classifier (a file from ``python -m training.classifier``)
    and, when given, the FID Inception (``engines.evaluation.inception``). Raises EvaluationError for a bad file."""
    networks: dict = {}
    if classifier is not None:
        from engines.models import resnet

        try:
            cf = resnet.load(classifier)
        except (OSError, ValueError) as e:
            raise EvaluationError(str(e)) from None
        net = cf.build()
        networks[classifier.stem] = (net.features, net.fc, cf.config.image_size, cf.classes)
    if inception is not None:
        from engines.evaluation.inception import load_fid_inception

        try:
            net = load_fid_inception(inception)
        except (OSError, ValueError) as e:
            raise EvaluationError(str(e)) from None
        networks["Inception, i.e. FID"] = (net.features, None, 299, [])
    return networks


def evaluate_pairs(
    pairs: list[tuple[str, Path, Path]], prior: torch.Tensor, probe: RealismProbe | None = None
) -> tuple[dict, list[PairScores]]:
    pool = ScorePool(prior)
    scores = []
    for name, pred, true in pairs:
        p, t = read_photo(pred).rgb, read_photo(true).rgb
        scores.append(pool.add(name, p, t))
        if probe is not None:
            probe.add(name, p, t)
    extra = probe.summary() if probe is not None else {}
    return {"images": len(scores), **pool.summary(), **extra}, scores


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of the first video stream (cover art skipped) as 8-bit RGB ``(H, W, 3)``, converted
    with the stream's declared matrix and range as the film pipeline reads them
    (``engines.video.film.decode_colorspace``), each at the first frame's size. Streamed, one frame at a time.
    Raises EvaluationError when the file cannot be opened or decoded."""
    try:
        with av.open(str(path)) as container:
            streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            if not streams:
                raise EvaluationError(f"{path.name}: no video stream")
            size = None
            for frame in container.decode(streams[0]):
                matrix, rng = decode_colorspace(frame)
                kwargs = {"src_colorspace": matrix, "src_color_range": rng} if matrix is not None else {}
                if size is None:
                    size = frame.width, frame.height
                elif (frame.width, frame.height) != size:
                    kwargs.update(width=size[0], height=size[1], interpolation="BICUBIC")
                yield frame.to_ndarray(format="rgb24", threads=1, **kwargs)
    except av.FFmpegError as exc:
        raise EvaluationError(f"{path.name}: cannot read: {exc.strerror or exc}") from None


def _unit(rgb_u8: np.ndarray) -> np.ndarray:
    return rgb_u8.astype(np.float32) / 255


def _chw_u8(rgb_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb_u8).permute(2, 0, 1)


def evaluate_video(name: str, pred: Path, true: Path, pool: ScorePool) -> dict:
    """Score one film against its truth: its frames go into ``pool``; returns the video's own numbers
    (frames, warping error and CDC of result and truth). One pass over both files; the flow of each
    truth frame pair is computed once and serves both warping errors."""
    cdc_pred, cdc_true = ColourDistributionConsistency(), ColourDistributionConsistency()
    warp_pred = warp_true = 0.0
    frames = 0
    prev: tuple[np.ndarray, np.ndarray] | None = None
    preds, trues = video_frames(pred), video_frames(true)
    for p, t in itertools.zip_longest(preds, trues):
        if p is None or t is None:
            n_pred = frames + (p is not None) + sum(1 for _ in preds)
            n_true = frames + (t is not None) + sum(1 for _ in trues)
            raise MismatchError(f"{name}: frame counts differ ({n_pred} in the result, {n_true} in the truth)")
        if p.shape != t.shape:
            raise MismatchError(f"{name}: frame sizes differ ({p.shape[1]}x{p.shape[0]} vs {t.shape[1]}x{t.shape[0]})")
        pool.add(f"{name}#{frames}", p, t)
        cdc_pred.update(_chw_u8(p))
        cdc_true.update(_chw_u8(t))
        p, t = _unit(p), _unit(t)
        if prev is not None:
            # Lai et al.: flow and occlusion from the truth, applied to the result (and to the truth).
            flow, mask = reference_flow(prev[1], t)
            warp_pred += pair_warping_error(prev[0], p, flow, mask)
            warp_true += pair_warping_error(prev[1], t, flow, mask)
        prev = p, t
        frames += 1
    if frames < 2:
        raise EvaluationError(f"{name}: a video needs at least two frames, got {frames}")
    enough = cdc_true.frames > max(cdc_true.steps)
    return {
        "name": name,
        "frames": frames,
        "warping_error": warp_pred / (frames - 1),
        "warping_error_truth": warp_true / (frames - 1),
        "cdc": cdc_pred.value() if enough else None,
        "cdc_truth": cdc_true.value() if enough else None,
    }


def evaluate_videos(pairs: list[tuple[str, Path, Path]], prior: torch.Tensor) -> tuple[dict, list[dict]]:
    """Per-frame metrics pooled over every frame of every video, warping error and CDC averaged over
    videos (CDC over the videos long enough to have one, None if none is). Per video: its own frame
    metrics and temporal numbers."""
    total = ScorePool(prior)
    per_video = []
    for name, pred, true in pairs:
        pool = ScorePool(prior)
        numbers = evaluate_video(name, pred, true, pool)
        total.merge(pool)
        per_video.append({**numbers, **pool.summary()})

    def mean(key: str) -> float | None:
        values = [v[key] for v in per_video if v[key] is not None]
        return float(np.mean(values)) if values else None

    summary = {
        "videos": len(per_video),
        "frames": total.count,
        **total.summary(),
        "warping_error": mean("warping_error"),
        "warping_error_truth": mean("warping_error_truth"),
        "cdc": mean("cdc"),
        "cdc_truth": mean("cdc_truth"),
    }
    return summary, per_video


def as_dicts(scores: list[PairScores]) -> list[dict]:
    return [asdict(s) for s in scores]
