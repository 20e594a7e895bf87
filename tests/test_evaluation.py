"""`colorize eval` metrics: against scikit-image's implementations, and on cases with known answers."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

from colorcli.app import app
from engines.color import lab_to_rgb
from engines.evaluation.scoring import (
    EvaluationError,
    MismatchError,
    evaluate_pairs,
    evaluate_videos,
    pair_files,
    split_pairs,
    training_prior,
    video_frames,
)
from engines.metrics import cdc, ciede2000, psnr, ssim
from engines.video import temporal


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import skimage.data

    return skimage.data.chelsea().astype(np.float64) / 255


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(2, 0, 1)


def test_psnr_ssim_ciede2000_agree_with_scikit_image(photo, rng):
    noisy = np.clip(photo + rng.normal(0, 0.04, photo.shape), 0, 1)
    assert float(psnr(_chw(noisy), _chw(photo))) == pytest.approx(
        peak_signal_noise_ratio(photo, noisy, data_range=1), abs=1e-9
    )
    ref = structural_similarity(
        photo, noisy, channel_axis=2, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert float(ssim(_chw(noisy)[None], _chw(photo)[None])[0]) == pytest.approx(ref, abs=1e-9)
    la, lb = rgb2lab(photo), rgb2lab(noisy)
    ours = ciede2000(_chw(la), _chw(lb)).numpy()
    np.testing.assert_allclose(ours, deltaE_ciede2000(la, lb), atol=1e-9)


def test_ciede2000_on_sharma_reference_pairs():
    """Pairs 1, 7 and 17 of Sharma, Wu and Dalal (2005), Table 1."""
    lab1 = torch.tensor([[50.0, 2.6772, -79.7751], [50.0, 0.0, 0.0], [50.0, 2.5, 0.0]]).T.reshape(3, 1, 3)
    lab2 = torch.tensor([[50.0, 0.0, -82.7485], [50.0, -1.0, 2.0], [73.0, 25.0, -18.0]]).T.reshape(3, 1, 3)
    np.testing.assert_allclose(ciede2000(lab1, lab2).flatten().numpy(), [2.0425, 2.3669, 27.1492], atol=1e-4)


def _write(path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.round(rgb[..., ::-1] * 65535).astype(np.uint16))  # 16-bit: no 8-bit rounding


def test_green_and_false_colour_known_answers(tmp_path):
    # Left half a lawn, right half a gray wall; a "sepia" result browns the lawn, a "false" result
    # paints the wall red, keeping each pixel's lightness.
    lawn, wall = np.array([0.25, 0.55, 0.15]), np.array([0.5, 0.5, 0.5])
    truth = np.concatenate([np.broadcast_to(lawn, (16, 16, 3)), np.broadcast_to(wall, (16, 16, 3))], axis=1)
    lab = rgb2lab(truth)
    lawn_a = float(lab[0, 0, 1])
    sepia, false = lab.copy(), lab.copy()
    sepia[:, :16, 1:] = (4.0, 12.0)
    false[:, 16:, 1:] = (30.0, 15.0)  # chroma 33.5, above 25
    for name, img in {"truth": truth, "perfect": truth, "sepia": lab2rgb(sepia), "false": lab2rgb(false)}.items():
        _write(tmp_path / name / "x.png", img)
    prior = training_prior()
    got = {
        n: evaluate_pairs(pair_files(tmp_path / n, tmp_path / "truth"), prior)[0] for n in ("perfect", "sepia", "false")
    }
    assert lawn_a < -30 and got["perfect"]["green_a_truth"] == pytest.approx(lawn_a, abs=0.05)
    assert got["perfect"]["green_a"] == pytest.approx(lawn_a, abs=0.05)
    assert got["sepia"]["green_a"] == pytest.approx(4.0, abs=0.1)
    # The truly neutral pixels are the wall's: coloured strongly by none of perfect and sepia, all of false
    # (whose strongly coloured pixels are half lawn, half wall: the other conditional would give 50 %).
    assert got["perfect"]["false_colour_percent"] == got["sepia"]["false_colour_percent"] == 0.0
    assert got["false"]["false_colour_percent"] == pytest.approx(100.0)


def test_known_answers_perfect_gray_and_shifted(tmp_path, photo):
    lab = rgb2lab(photo)
    # A constant shift of a by +10.5, on the pixels where that stays inside the gamut. (Half a unit
    # from the integer thresholds, so 16-bit rounding cannot move an error across one.)
    shifted = lab.copy()
    shifted[..., 1] += 10.5
    rgb_shift = lab_to_rgb(_chw(shifted)).permute(1, 2, 0).numpy()
    inside = ((rgb_shift >= 0) & (rgb_shift <= 1)).all(-1)
    truth = np.where(inside[..., None], photo, 0.5)
    rgb_shift = np.where(inside[..., None], rgb_shift, 0.5)
    gray = rgb2lab(truth)
    gray[..., 1:] = 0
    rgb_gray = lab_to_rgb(_chw(gray)).permute(1, 2, 0).clamp(0, 1).numpy()
    for name, img in {"truth": truth, "perfect": truth, "gray": rgb_gray, "shift": rgb_shift}.items():
        _write(tmp_path / name / "x.png", img)
    prior = training_prior()
    perfect, _ = evaluate_pairs(pair_files(tmp_path / "perfect", tmp_path / "truth"), prior)
    assert perfect["auc"] == perfect["auc_rebalanced"] == 100.0
    assert perfect["ciede2000"] < 1e-3 and perfect["ssim"] > 0.9999 and perfect["psnr"] > 90
    assert perfect["colourfulness_gap_per_image"] < 1e-3 and perfect["lightness_error"] < 1e-3
    grayed, _ = evaluate_pairs(pair_files(tmp_path / "gray" / "x.png", tmp_path / "truth" / "x.png"), prior)
    assert grayed["colourfulness"] < 0.5 and grayed["lightness_error"] < 0.05
    assert grayed["colourfulness_gap_of_means"] == pytest.approx(grayed["colourfulness_true"], abs=0.5)
    assert 40 < grayed["auc"] < 100
    shift, _ = evaluate_pairs(pair_files(tmp_path / "shift", tmp_path / "truth"), prior)
    # Every pixel inside the gamut is off by ab distance 10.5, within threshold from t = 11 on (the rest
    # are exact): the AuC follows from the definition.
    frac = inside.mean()
    expected = 100 * ((1 - frac) * 1 + frac * (151 - 11) / 151)
    assert shift["auc"] == pytest.approx(expected, abs=0.05)


def test_pairing_needs_every_truth(tmp_path, photo):
    _write(tmp_path / "res" / "a.png", photo)
    _write(tmp_path / "res" / "b.png", photo)
    _write(tmp_path / "gt" / "a.png", photo)
    with pytest.raises(EvaluationError, match="no ground truth"):
        pair_files(tmp_path / "res", tmp_path / "gt")


def test_eval_command_table_json_and_errors(tmp_path, photo):
    _write(tmp_path / "res" / "a.png", photo)
    _write(tmp_path / "gt" / "a.png", photo)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(tmp_path / "res"), str(tmp_path / "gt"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["auc"] == 100.0
    r = runner.invoke(app, ["eval", str(tmp_path / "res"), str(tmp_path / "gt")])
    assert r.exit_code == 0 and "CIEDE2000" in r.stdout
    r = runner.invoke(app, ["eval", str(tmp_path / "res"), str(tmp_path / "missing")])
    assert r.exit_code == 1 and "eval:" in r.stderr


# ---------------------------------------------------------------------------------------------
# Videos: small synthetic films, written losslessly (FFV1 in Matroska) with PyAV
# ---------------------------------------------------------------------------------------------


def write_video(path, frames: list[np.ndarray], codec: str = "ffv1") -> Path:
    """8-bit RGB frames -> a film: FFV1 (bgr0, lossless) or libx264 CRF 0 in yuv444p (lossless in YUV)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = w, h
        stream.pix_fmt = "bgr0" if codec == "ffv1" else "yuv444p"
        if codec == "libx264":
            stream.options = {"crf": "0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def moving_frames(n: int = 10, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """A smooth colourful texture panning 2 px right and 1 px down per frame."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (h + 40, w + 40, 3), dtype=np.uint8), (0, 0), 3)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    return [np.ascontiguousarray(big[5 + i : 5 + i + h, 3 + 2 * i : 3 + 2 * i + w]) for i in range(n)]


def flickered(frames: list[np.ndarray], seed: int = 1) -> list[np.ndarray]:
    """Random per-frame, per-channel gains in [0.75, 1.25]: colour flicker."""
    rng = np.random.default_rng(seed)
    return [np.clip(f * rng.uniform(0.75, 1.25, 3), 0, 255).astype(np.uint8) for f in frames]


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("films")
    frames = moving_frames()
    return {
        "truth": write_video(root / "truth" / "clip.mkv", frames),
        "x264": write_video(root / "x264" / "clip.mp4", frames, "libx264"),
        "flicker": write_video(root / "flicker" / "clip.mkv", flickered(frames)),
        "short": write_video(root / "short" / "clip.mkv", frames[:8]),
    }


def test_video_frames_decode_losslessly(films):
    decoded = list(video_frames(films["truth"]))
    assert len(decoded) == 10
    for got, want in zip(decoded, moving_frames(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_video_against_itself_is_perfect_and_matches_the_truths_own_temporal_numbers(films):
    summary, per_video = evaluate_videos([("clip", films["truth"], films["truth"])], training_prior())
    assert summary["videos"] == 1 and summary["frames"] == 10 and per_video[0]["frames"] == 10
    assert summary["auc"] == summary["auc_rebalanced"] == 100.0
    assert summary["psnr"] > 90 and summary["ssim"] > 0.9999 and summary["ciede2000"] < 1e-6
    assert summary["lightness_error"] < 1e-6 and summary["colourfulness_gap_per_image"] < 1e-6
    assert summary["warping_error"] == summary["warping_error_truth"]
    assert summary["cdc"] == summary["cdc_truth"]
    # The numbers are those of the library functions on the decoded frames: the warping error of
    # engines.video.temporal (flow from the truth) and the CDC of engines.metrics.
    frames = [f.astype(np.float32) / 255 for f in moving_frames()]
    assert summary["warping_error_truth"] == pytest.approx(temporal.warping_error(frames, frames), rel=1e-12)
    assert summary["cdc_truth"] == pytest.approx(cdc(torch.from_numpy(f).permute(2, 0, 1) for f in moving_frames()))
    assert summary["cdc_truth"] > 0  # a moving texture's histograms do change a little


def test_video_through_another_lossless_codec_is_perfect_within_codec_tolerance(films):
    # libx264 CRF 0 is lossless in YUV; the RGB -> YUV -> RGB round trip moves values by a level or two.
    summary, _ = evaluate_videos([("clip", films["x264"], films["truth"])], training_prior())
    assert summary["auc"] > 99 and summary["psnr"] > 45 and summary["ciede2000"] < 1
    assert summary["warping_error"] == pytest.approx(summary["warping_error_truth"], rel=0.2)
    assert summary["cdc"] < 2 * summary["cdc_truth"]


def test_flicker_raises_warping_error_and_cdc(films):
    summary, _ = evaluate_videos([("clip", films["flicker"], films["truth"])], training_prior())
    assert summary["warping_error"] > 100 * summary["warping_error_truth"]
    assert summary["cdc"] > 10 * summary["cdc_truth"]
    assert summary["auc"] < 99  # the gains change colours too


def test_video_pairing_by_relative_path_and_mismatches(tmp_path, films, photo):
    # Folders of films pair by relative path, extension ignored (clip.mp4 with clip.mkv).
    pairs = pair_files(films["x264"].parent, films["truth"].parent)
    assert split_pairs(pairs) == ([], [("clip", films["x264"], films["truth"])])
    with pytest.raises(MismatchError, match=r"^clip: frame counts differ \(8 in the result, 10 in the truth\)$"):
        evaluate_videos([("clip", films["short"], films["truth"])], training_prior())
    small = write_video(tmp_path / "small.mkv", [f[:32, :48].copy() for f in moving_frames()])
    with pytest.raises(MismatchError, match=r"frame sizes differ \(48x32 vs 64x48\)"):
        evaluate_videos([("clip", small, films["truth"])], training_prior())
    _write(tmp_path / "still.png", photo)
    with pytest.raises(MismatchError, match="the truth is a video and the other is not"):
        split_pairs(pair_files(tmp_path / "still.png", films["truth"]))
    _write(tmp_path / "mixed" / "a.png", photo)
    write_video(tmp_path / "mixed" / "b.mkv", moving_frames(3))
    with pytest.raises(MismatchError, match="photos or videos, not both"):
        split_pairs(pair_files(tmp_path / "mixed", tmp_path / "mixed"))


def test_eval_command_on_videos_table_and_json(films):
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(films["flicker"]), str(films["truth"]), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["summary"]["frames"] == 10 and out["videos"][0]["name"] == "clip"
    assert out["summary"]["warping_error"] > out["summary"]["warping_error_truth"] > 0
    assert out["summary"]["cdc"] > out["summary"]["cdc_truth"] > 0
    r = runner.invoke(app, ["eval", str(films["flicker"]), str(films["truth"])])
    assert r.exit_code == 0, r.output
    assert "warping error" in r.stdout and "CDC" in r.stdout and "10 frame(s)" in r.stdout
