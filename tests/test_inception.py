"""Tests for engines.evaluation.inception: the FID Inception's layout and loading, and the Frechet distance's known answers.

The real weights file (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``) cannot be downloaded here, so
the layout is checked against names and counts restated from pytorch-fid's and torchvision's inception.py,
and loading with random weights saved in the same form.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch.nn import functional as F

from engines.evaluation import inception as I

# Expected names, restated from torchvision's Inception3 (which pytorch-fid patches) rather than read
# from our module: block -> its BasicConv2d submodules.
STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
BRANCHES = {
    "A": [
        "branch1x1",
        "branch5x5_1",
        "branch5x5_2",
        "branch3x3dbl_1",
        "branch3x3dbl_2",
        "branch3x3dbl_3",
        "branch_pool",
    ],
    "B": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "C": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3"]
    + [f"branch7x7dbl_{i}" for i in range(1, 6)]
    + ["branch_pool"],
    "D": ["branch3x3_1", "branch3x3_2"] + [f"branch7x7x3_{i}" for i in range(1, 5)],
    "E": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b"]
    + ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}
BLOCKS = {"5b": "A", "5c": "A", "5d": "A", "6a": "B", "6b": "C", "6c": "C", "6d": "C", "6e": "C", "7a": "D"}
BLOCKS |= {"7b": "E", "7c": "E"}
BASIC_CONV_KEYS = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]

# torchvision documents Inception v3 (aux classifier, 1000 classes) at 27,161,264 parameters. The FID
# network drops AuxLogits (conv0 768*128 + BN 2*128, conv1 128*768*5*5 + BN 2*768, fc 768*1000 + 1000:
# 3,326,696) and has 8 more classes (8 * 2049 = 16,392).
FID_PARAMS = 27_161_264 - 3_326_696 + 8 * 2049
assert FID_PARAMS == 23_850_960


def expected_keys() -> set[str]:
    convs = list(STEM) + [f"Mixed_{b}.{br}" for b, kind in BLOCKS.items() for br in BRANCHES[kind]]
    return {f"{c}.{k}" for c in convs for k in BASIC_CONV_KEYS} | {"fc.weight", "fc.bias"}


@pytest.fixture(scope="module")
def net() -> I.FIDInceptionV3:
    """Random weights that keep activations O(1) through 47 layers (default init lets them fade to ~1e-8)."""
    torch.manual_seed(0)
    m = I.FIDInceptionV3()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.8, 1.2)
                mod.bias.normal_(0, 0.1)
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.8, 1.2)
                mod.num_batches_tracked.fill_(7)
    return m


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


def test_state_dict_has_the_weights_files_names_and_counts(net):
    sd = net.state_dict()
    assert set(sd) == expected_keys()
    assert len(sd) == 94 * 6 + 2  # 94 BasicConv2d (conv weight, 4 BN tensors, BN step counter) + fc
    assert sum(p.numel() for p in net.parameters()) == FID_PARAMS
    assert len(list(net.parameters())) == 94 * 3 + 2
    assert not any("AuxLogits" in k or k.endswith("conv.bias") for k in sd)


@pytest.mark.parametrize(
    "key, shape",
    [
        ("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)),
        ("Conv2d_1a_3x3.bn.running_mean", (32,)),
        ("Conv2d_4a_3x3.conv.weight", (192, 80, 3, 3)),
        ("Mixed_5b.branch1x1.conv.weight", (64, 192, 1, 1)),
        ("Mixed_5b.branch_pool.conv.weight", (32, 192, 1, 1)),
        ("Mixed_5d.branch5x5_2.conv.weight", (64, 48, 5, 5)),
        ("Mixed_6a.branch3x3.conv.weight", (384, 288, 3, 3)),
        ("Mixed_6b.branch7x7_2.conv.weight", (128, 128, 1, 7)),
        ("Mixed_6e.branch7x7dbl_5.conv.weight", (192, 192, 1, 7)),
        ("Mixed_7a.branch3x3_2.conv.weight", (320, 192, 3, 3)),
        ("Mixed_7b.branch1x1.conv.weight", (320, 1280, 1, 1)),
        ("Mixed_7c.branch3x3dbl_1.conv.weight", (448, 2048, 1, 1)),
        ("Mixed_7c.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
        ("Mixed_7c.branch3x3dbl_3b.bn.bias", (384,)),
        ("fc.weight", (1008, 2048)),
        ("fc.bias", (1008,)),
    ],
)
def test_named_shapes(net, key, shape):
    assert tuple(net.state_dict()[key].shape) == shape


def test_batchnorm_eps_is_tensorflows(net):
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 94 and all(m.eps == 0.001 for m in bns)


@pytest.mark.parametrize(
    "block, channels, pool",
    [("Mixed_5b", 192, "avg"), ("Mixed_6b", 768, "avg"), ("Mixed_7b", 1280, "avg"), ("Mixed_7c", 2048, "max")],
)
def test_pool_branches_are_the_fid_variants(net, monkeypatch, block, channels, pool):
    """TF-style average pools (padding left out of the mean) in A, C and the first E; a max pool in Mixed_7c."""
    calls = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls.append((name, args[1:], kwargs))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(F, "avg_pool2d", spy("avg", F.avg_pool2d))
    monkeypatch.setattr(F, "max_pool2d", spy("max", F.max_pool2d))
    with torch.inference_mode():
        y = getattr(net, block)(torch.rand(1, channels, 5, 5))
    assert y.shape[2:] == (5, 5)
    assert len(calls) == 1 and calls[0][0] == pool
    _, args, kwargs = calls[0]
    assert kwargs.get("kernel_size", args[0] if args else None) == 3
    assert kwargs["stride"] == 1 and kwargs["padding"] == 1
    if pool == "avg":
        assert kwargs["count_include_pad"] is False


def test_tf_average_pool_does_not_dilute_borders():
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(I._tf_avg_pool(x), x)  # torchvision's default would give 4/9 in the corners


def test_stays_in_eval_mode(net):
    net.train()
    assert not net.training and not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())


# --------------------------------------------------------------------------------------------
# Input pipeline and features
# --------------------------------------------------------------------------------------------


def test_preprocess_is_pytorch_fids():
    x = torch.rand(2, 3, I.INPUT_SIZE, I.INPUT_SIZE)
    torch.testing.assert_close(I.FIDInceptionV3.preprocess(x), 2 * x - 1)  # 299 in: no resampling, only 2x - 1
    y = torch.rand(1, 3, 40, 70)
    expected = 2 * F.interpolate(y, size=(299, 299), mode="bilinear", align_corners=False) - 1
    assert torch.equal(I.FIDInceptionV3.preprocess(y), expected)
    flat = I.FIDInceptionV3.preprocess(torch.full((1, 3, 17, 23), 0.25))
    assert flat.shape == (1, 3, 299, 299)
    torch.testing.assert_close(flat, torch.full_like(flat, -0.5))


def test_features_shape_and_dtype(net):
    g = torch.Generator().manual_seed(1)
    f = net.features(torch.rand(2, 3, 37, 53, generator=g))
    assert f.shape == (2, 2048) and f.dtype == torch.float64 and f.device.type == "cpu"
    assert torch.isfinite(f).all() and (f >= 0).all()  # mean of ReLU outputs
    assert f.std() > 1e-3 and not torch.allclose(f[0], f[1])
    assert net.features(torch.rand(0, 3, 8, 8)).shape == (0, 2048)


@pytest.mark.parametrize("bad", [torch.rand(2, 3, 8, 8) * 255, torch.rand(3, 8, 8), torch.rand(2, 1, 8, 8)])
def test_features_reject_bad_input(net, bad):
    with pytest.raises(ValueError):
        net.features(bad)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def test_round_trip(net, tmp_path):
    path = tmp_path / I.FID_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    loaded = I.load_fid_inception(path)
    assert isinstance(loaded, I.FIDInceptionV3) and not loaded.training
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert net.is_reference_file is None and loaded.is_reference_file is False  # our random weights
    got = loaded.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(got[k], v), k
    # The network is fully convolutional up to the pool; an 80x80 input keeps this fast on 2 cores.
    x = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(2)) * 2 - 1
    a, b = _forward(net, x), _forward(loaded, x)
    assert a.shape == (2, 2048) and torch.equal(a, b)


def test_loads_a_file_without_batchnorm_step_counters(net, tmp_path):
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    loaded = I.load_fid_inception(path)
    assert torch.equal(loaded.Mixed_7c.branch_pool.bn.running_var, net.Mixed_7c.branch_pool.bn.running_var)


def _placeholders(net) -> dict[str, torch.Tensor]:
    # Right shapes without the bytes: a stride-0 view of one number is saved as one number.
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in net.state_dict().items()}


def _load_error(tmp_path, payload, raw: bytes | None = None) -> str:
    path = tmp_path / "weights.pth"
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(payload, path)
    with pytest.raises(ValueError) as e:
        I.load_fid_inception(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_missing_key_is_named(net, tmp_path):
    sd = _placeholders(net)
    del sd["Mixed_7c.branch3x3dbl_3b.bn.bias"]
    msg = _load_error(tmp_path, sd)
    assert "missing 1 keys: Mixed_7c.branch3x3dbl_3b.bn.bias" in msg


def test_unexpected_keys_are_named(net, tmp_path):
    sd = _placeholders(net)
    sd |= {f"AuxLogits.conv{i}.conv.weight": torch.zeros(1) for i in range(5)}
    msg = _load_error(tmp_path, sd)
    assert "unexpected 5 keys: AuxLogits.conv0.conv.weight" in msg and "(+2 more)" in msg


def test_torchvision_sized_classifier_is_a_shape_error(net, tmp_path):
    sd = _placeholders(net)
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    msg = _load_error(tmp_path, sd)
    assert "fc.weight has shape (1000, 2048), expected (1008, 2048)" in msg


def test_non_torch_file(tmp_path):
    assert "not a readable PyTorch weights file" in _load_error(tmp_path, None, raw=b"GIF89a not weights at all")


def test_truncated_file(net, tmp_path):
    path = tmp_path / "full.pth"
    torch.save(_placeholders(net), path)
    assert "not a readable" in _load_error(tmp_path, None, raw=path.read_bytes()[:5000])


def test_not_a_state_dict(tmp_path):
    assert "not a state_dict" in _load_error(tmp_path, [torch.zeros(3)])


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        I.load_fid_inception(tmp_path / "nowhere.pth")
