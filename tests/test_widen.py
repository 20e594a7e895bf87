import pytest
import torch

from engines.models import checkpoint
from engines.models.unet import UNet, UNetConfig
from training.widen import main, widen


def _engine(widths=(8, 16, 32, 64)) -> checkpoint.EngineCheckpoint:
    torch.manual_seed(1)
    model = UNet(UNetConfig(out_channels=12, widths=widths, output_stride=2))
    with torch.no_grad():  # trained-looking BatchNorm statistics, so that copying them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return checkpoint.EngineCheckpoint("classification", model.config, model.state_dict())


def test_the_wider_network_computes_what_the_narrow_one_did_and_its_new_channels_are_live():
    narrow = _engine()
    wide = widen(narrow, (8, 24, 48, 96))
    assert wide.arch.widths == (8, 24, 48, 96)
    x = torch.randn(2, 1, 48, 64)
    a, b = narrow.build_model(), wide.build_model()
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-4)
        # The zeros are what keeps it equal: a new channel's weight into an old output changes the output.
        broken = wide.build_model()
        broken.up[0][0][0].weight[:32, 64:96] = 1.0  # old outputs of the first decoder stage, new deep channels
        assert (broken(x) - a(x)).abs().max() > 1e-3  # ten times the tolerance above
    # The new channels are computed (fresh weights), not dead.
    feats = {}
    b.down[2].register_forward_hook(lambda m, i, o: feats.setdefault("deep", o))
    with torch.no_grad():
        b(x)
    assert feats["deep"][:, 64:].abs().sum() > 0


def test_widths_must_grow_and_the_command_says_why_in_one_line(tmp_path, capsys):
    narrow = _engine()
    with pytest.raises(ValueError, match="each at least"):
        widen(narrow, (8, 8, 32, 64))
    with pytest.raises(ValueError, match="each at least"):
        widen(narrow, (8, 16, 32))
    path = tmp_path / "narrow.pt"
    checkpoint.save(narrow, path)
    assert main([str(path), "--widths", "8,16,x,64", "--out", str(tmp_path / "w.pt")]) == 2
    assert main([str(path), "--widths", "8,16,48,96", "--out", str(tmp_path / "w.pt")]) == 0
    assert checkpoint.load(tmp_path / "w.pt").arch.widths == (8, 16, 48, 96)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
