"""Backends other than TensorRT: selection, the same picture from each runner, the CPU runner choice
and its cache, the ONNX export cache, and FP16's distance from FP32."""

import json

import pytest
import torch

from engines import color
from engines.media.photo_io import read_photo
from engines.models.registry import ENGINES
from engines.pipeline import load_colorizer
from engines.runtime import backends as runtime
from engines.runtime.backends import BackendUnavailable, select_backend

pytest.importorskip("onnxruntime")

PHOTO = "examples/astronaut_gray.jpg"
# Runners differ only by floating-point summation order: ab within this many CIELAB units.
BACKEND_MAX_AB_DIFF = 0.05


def _ab(c, rgb):
    l = color.rgb_to_lightness(torch.from_numpy(rgb).permute(2, 0, 1))[None]
    return c.predict_ab(l)


@pytest.fixture(scope="module")
def photo():
    return read_photo(PHOTO).rgb


def test_unknown_and_unavailable_backends_are_clear_errors():
    with pytest.raises(BackendUnavailable, match="unknown backend 'warp'"):
        select_backend("warp")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="cuda backend unavailable: no CUDA GPU"):
            select_backend("cuda")
        auto = select_backend("auto")
        assert auto.name == "cpu-fastest"
        assert [n.split(":")[0] for n in auto.notes] == ["tensorrt skipped", "cuda skipped"]


def _float32_colorizer(monkeypatch, name):
    """The engine on the CPU backend in float32, also on CPUs where that backend runs bf16."""
    with monkeypatch.context() as m:
        m.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
        return load_colorizer(name, select_backend("cpu"))


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_cpu_backend_gives_the_same_picture(monkeypatch, name, photo):
    """Float32 runners agree to summation order; a bf16 runner (the CPU backend's on CPUs with native
    bf16) within the bf16 bound."""
    ref = _ab(_float32_colorizer(monkeypatch, name), photo)
    worst = {False: 0.0, True: 0.0}
    for backend in ("cpu", "onnxruntime", "auto"):
        c = load_colorizer(name, select_backend(backend))
        assert any("picked" in n or "requested" in n for n in c.notes)
        bf16 = isinstance(c.model, runtime.Bf16Model)
        worst[bf16] = max(worst[bf16], float((_ab(c, photo) - ref).abs().max()))
    print(f"{name}: max |ab| from float32 PyTorch: float32 runners {worst[False]:.2e}, bf16 {worst[True]:.2e}")
    assert worst[False] < BACKEND_MAX_AB_DIFF
    assert worst[True] < runtime.BF16_MAX_AB_DIFF


def test_cpu_choice_is_measured_once_then_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("COLORIZE_CACHE_DIR", str(tmp_path))
    first = load_colorizer("regression", select_backend("auto"))
    assert "measured now" in first.notes[-1]
    store = json.loads((tmp_path / "cpu-choice.json").read_text())
    ((key, speedup),) = store.items()
    assert isinstance(speedup, float) and speedup > 0
    second = load_colorizer("regression", select_backend("auto"))
    assert "cached measurement" in second.notes[-1]
    # The verdict follows the measurement: a cached slowdown keeps PyTorch.
    (tmp_path / "cpu-choice.json").write_text(json.dumps({key: 0.5}))
    third = load_colorizer("regression", select_backend("auto"))
    assert isinstance(third.model, torch.nn.Module) and not isinstance(third.model, runtime.OnnxRuntimeModel)
    assert third.notes[-1].startswith("cpu (PyTorch) picked: onnxruntime only 0.50x")
    (tmp_path / "cpu-choice.json").write_text(json.dumps({key: 3.0}))
    assert isinstance(load_colorizer("regression", select_backend("auto")).model, runtime.OnnxRuntimeModel)
    # A damaged store is measured again, not trusted.
    (tmp_path / "cpu-choice.json").write_text("{not json")
    assert "measured now" in load_colorizer("regression", select_backend("auto")).notes[-1]


def test_a_damaged_onnx_cache_entry_is_exported_again(monkeypatch, tmp_path, photo):
    monkeypatch.setenv("COLORIZE_CACHE_DIR", str(tmp_path))
    ref = _ab(load_colorizer("regression", select_backend("onnxruntime")), photo)
    (entry,) = (p for p in (tmp_path / "onnx").glob("*.onnx") if not p.stem.endswith("-decoded"))  # the network's
    entry.write_bytes(b"garbage")
    again = _ab(load_colorizer("regression", select_backend("onnxruntime")), photo)
    assert torch.equal(ref, again) and entry.stat().st_size > 1000


def test_onnxruntime_threads_can_change(photo):
    c = load_colorizer("regression", select_backend("onnxruntime"))
    ref = _ab(c, photo)
    c.set_threads(1)
    assert c.model.session.get_session_options().intra_op_num_threads == 1
    assert torch.allclose(_ab(c, photo), ref, atol=1e-4)
    c.set_threads(torch.get_num_threads())


@pytest.mark.parametrize("name", list(ENGINES))
def test_fp16_stays_close_to_fp32(monkeypatch, name, photo):
    """What the CUDA backend's half precision costs, measured on the CPU's FP16 kernels."""
    c = _float32_colorizer(monkeypatch, name)
    ref = _ab(c, photo)
    net = c.model.half()

    class Half(torch.nn.Module):
        multiple = net.multiple

        def forward(self, x):
            return net(x.half()).float()

    c.model = Half()
    diff = (_ab(c, photo) - ref).abs()
    print(f"{name}: FP16 vs FP32 ab difference: max {float(diff.max()):.3f}, mean {float(diff.mean()):.4f}")
    assert float(diff.max()) < runtime.FP16_MAX_AB_DIFF
    assert float(diff.mean()) < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the development machines)")
@pytest.mark.parametrize("name", list(ENGINES))
def test_cuda_matches_cpu(name, photo):  # pragma: no cover - runs only where a GPU is present
    ref = _ab(load_colorizer(name, select_backend("cpu")), photo)
    c = load_colorizer(name, select_backend("cuda"))
    for _ in range(2):  # the second call replays the captured CUDA graph
        assert float((_ab(c, photo) - ref).abs().max()) < runtime.FP16_MAX_AB_DIFF


@pytest.mark.parametrize("name", list(ENGINES))
def test_bf16_stays_close_to_fp32(monkeypatch, name):
    """The bf16 path (taken only on CPUs with AMX or AVX-512 BF16) against float32, on a small photo.
    Autocast runs on any CPU (emulated, slowly, on AVX2), so the bound is checked here; its speed is not."""
    rgb = read_photo(PHOTO).rgb[::4, ::4].copy()  # 128x128: the engines' working size or less
    ref = _ab(_float32_colorizer(monkeypatch, name), rgb)
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    c = load_colorizer(name, select_backend("cpu"))
    assert isinstance(c.model, runtime.Bf16Model) and any("bf16" in n for n in c.notes)
    diff = (_ab(c, rgb) - ref).abs()
    print(f"{name}: bf16 vs float32 ab difference: max {float(diff.max()):.3f}, mean {float(diff.mean()):.4f}")
    assert float(diff.max()) < runtime.BF16_MAX_AB_DIFF
    assert float(diff.mean()) < 0.5
    assert float(diff.max()) > 0  # bf16 did run: the result is not float32's


def test_bf16_only_where_the_cpu_has_it():
    with open("/proc/cpuinfo") as f:
        flags = f.read().split()
    assert runtime.cpu_has_fast_bf16() == ("amx_bf16" in flags or "avx512_bf16" in flags)
    c = load_colorizer("gan", select_backend("cpu"))
    assert isinstance(c.model, runtime.Bf16Model) == runtime.cpu_has_fast_bf16()


@pytest.mark.parametrize("name", list(ENGINES))
def test_batch_norm_folded_into_the_convolutions_gives_the_same_picture(monkeypatch, name, photo):
    """``load_colorizer`` folds each BatchNorm into its convolution (``UNet.fold_batch_norm``): the
    picture is the unfolded network's up to float rounding, and no BatchNorm is left to run."""
    from engines.models import checkpoint
    from engines.models.registry import get_spec

    c = _float32_colorizer(monkeypatch, name)
    net = runtime.float32_network(c.model)
    assert not [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    folded = _ab(c, photo)
    unfolded = checkpoint.load(get_spec(name).weights_path()).build_model()
    assert [m for m in unfolded.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    c.model = unfolded
    diff = float((_ab(c, photo) - folded).abs().max())
    print(f"{name}: folded against unfolded, max |ab| difference {diff:.2e}")
    assert diff < BACKEND_MAX_AB_DIFF
    with pytest.raises(RuntimeError, match="eval"):
        unfolded.train().fold_batch_norm()
