"""`colorize eval` metrics: against scikit-image's implementations, and on cases with known answers."""

import json

import cv2
import numpy as np
import pytest
import torch
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

from colorcli.app import app
from engines.color import lab_to_rgb
from engines.evaluation import EvaluationError, evaluate_pairs, pair_files, training_prior
from engines.metrics import ciede2000, psnr, ssim


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
