"""ONNX export of an engine's network, with dynamic batch and spatial size.

The exported graph maps ``l_norm (N, 1, H, W)`` (normalised lightness, see ``engines.color``) to the
family's raw output (``ab_norm (N, 2, H, W)`` for regression); H and W must be multiples of
``UNet.multiple`` (16), as in the PyTorch pipeline, which pads to that before calling the engine.
This file is the input of the TensorRT builder (issue #5, not part of this build yet).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from engines.files import atomic_path
from engines.models.unet import UNet
from engines.runtime.precision import float32_network

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "l_norm", "ab_norm"


def export_onnx(model: UNet, path: Path, example_size: tuple[int, int] = (64, 96)) -> None:
    """Write ``model`` (its float32 network) as ONNX to ``path`` atomically (temporary name, then rename)."""
    model = float32_network(model).eval().cpu()
    example = torch.zeros(1, model.config.in_channels, *example_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    # The TorchScript-based exporter needs no extra packages and handles this plain CNN fully.
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=OPSET,
            dynamo=False,
        )
