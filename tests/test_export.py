"""ONNX export of every shipped engine, checked against PyTorch with ONNX Runtime."""

import numpy as np
import pytest
import torch

from engines.models.registry import ENGINES
from engines.pipeline import load_colorizer
from engines.runtime.backends import select_backend
from engines.runtime.export import INPUT_NAME, export_onnx
from engines.runtime.precision import float32_network

ort = pytest.importorskip("onnxruntime")

# Largest allowed difference between ONNX Runtime and PyTorch, in CIELAB ab units (FP32 both).
MAX_AB_DIFF = 0.01


@pytest.mark.parametrize("name", list(ENGINES))
def test_onnx_matches_pytorch_at_several_batches_and_sizes(name, tmp_path):
    colorizer = load_colorizer(name, select_backend("cpu"))
    # The float32 network (the CPU backend wraps it in bf16 autocast on CPUs with native bf16).
    model, decode = float32_network(colorizer.model), colorizer.decode  # decode: raw output -> ab
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    c = model.config.in_channels  # 2 for a GAN generator with a noise input
    for shape in [(1, c, 64, 64), (3, c, 128, 80), (2, c, 256, 256)]:
        l_norm = torch.rand(shape, generator=g) * 2 - 1
        with torch.inference_mode():
            ref = decode(model(l_norm)).numpy()
        out = decode(torch.from_numpy(session.run(None, {INPUT_NAME: l_norm.numpy()})[0])).numpy()
        assert out.shape == ref.shape
        worst = max(worst, float(np.abs(out - ref).max()))
    print(f"{name}: max |ab| difference ONNX Runtime vs PyTorch = {worst:.2e}")
    assert worst < MAX_AB_DIFF
    assert not (tmp_path / f".{name}.onnx.tmp").exists()
