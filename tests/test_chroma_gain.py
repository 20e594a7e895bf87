"""training.chroma_gain: a gain baked into the output layer colours exactly as --saturation does."""

import numpy as np
import pytest
import torch

from engines.models import checkpoint
from engines.models.unet import UNet, UNetConfig
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend
from training.chroma_gain import main, with_gain


def _engine(family="regression", color_space="lab") -> checkpoint.EngineCheckpoint:
    torch.manual_seed(3)
    model = UNet(UNetConfig(out_channels=2, widths=(8, 16, 32, 64), color_space=color_space))
    with torch.no_grad():
        model.head.bias.uniform_(-0.2, 0.2)  # a bias that must be scaled too
    return checkpoint.EngineCheckpoint(family, model.config, model.state_dict(), color_space, working_size=64)


def test_the_network_output_is_scaled_by_the_gain():
    plain = _engine()
    vivid = with_gain(plain, 1.3)
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(vivid.build_model()(x), 1.3 * plain.build_model()(x), rtol=1e-5, atol=1e-5)
    assert vivid.trained_on["chroma_gain"] == pytest.approx(1.3)
    assert with_gain(vivid, 1.1).trained_on["chroma_gain"] == pytest.approx(1.43)  # gains compose


def test_a_baked_gain_colours_a_photo_as_the_saturation_option_does(tmp_path):
    plain = _engine()
    checkpoint.save(plain, tmp_path / "plain.pt")
    checkpoint.save(with_gain(plain, 1.25), tmp_path / "vivid.pt")
    backend = select_backend("cpu")
    rng = np.random.default_rng(0)
    gray = np.repeat(rng.uniform(0.1, 0.9, (70, 90, 1)), 3, axis=2).astype(np.float32)
    by_option = load_colorizer("custom", backend, weights=tmp_path / "plain.pt")
    by_option.saturation = 1.25
    baked = load_colorizer("custom", backend, weights=tmp_path / "vivid.pt")
    as_is = load_colorizer("custom", backend, weights=tmp_path / "plain.pt")
    np.testing.assert_allclose(baked.colorize(gray), by_option.colorize(gray), atol=1e-4)
    assert np.abs(baked.colorize(gray) - as_is.colorize(gray)).max() > 1e-3  # the gain did something


def test_what_it_cannot_do_exactly_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="regression and gan"):
        with_gain(_engine("classification"), 1.2)
    with pytest.raises(ValueError, match="CIELAB"):
        with_gain(_engine(color_space="yuv"), 1.2)
    with pytest.raises(ValueError, match="above 0"):
        with_gain(_engine(), 0.0)
    assert main([str(tmp_path / "missing.pt"), "--gain", "1.2", "--out", str(tmp_path / "o.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "o.pt").exists()
