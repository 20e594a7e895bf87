"""ONNX export of an engine's network, with dynamic batch and spatial size.

The exported graph maps ``l_norm (N, 1, H, W)`` (normalised lightness, see ``engines.color``) to the
family's raw output (``ab_norm (N, 2, H, W)`` for regression); H and W must be multiples of
``UNet.multiple`` (16), as in the pipelines, which resample the photo to that shape (``work_shape``) before calling the engine.
This file is the input of the TensorRT builder (issue #5, not part of this build yet).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

from engines import color
from engines.files import atomic_path, write_text
from engines.models import classification
from engines.models.unet import UNet
from engines.runtime import bundle
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


class DecodedNetwork(torch.nn.Module):
    """The network and its family's decoding: normalised L ``(N, 1, H, W)`` -> ab in CIELAB units at
    the input's size, as ``engines.pipeline.Colorizer._engine`` computes it (the classification
    family's annealed mean, with the temperature and the rebalancing correction as inputs, then the
    upsampling of its quarter-resolution ab). The graph the photo path without PyTorch runs."""

    def __init__(self, net: UNet, family: str, family_state: dict):
        super().__init__()
        self.net, self.family = float32_network(net).eval().cpu(), family
        if family == "classification":
            centres = family_state["ab_centres"].float()
            log_w = family_state.get("log_rebalance")
            self.register_buffer("centres", centres)
            self.register_buffer("log_rebalance", log_w.float() if log_w is not None else torch.zeros(len(centres)))

    def forward(self, x: torch.Tensor, temperature: torch.Tensor | None = None, correction: torch.Tensor | None = None):
        raw = self.net(x)
        if self.family == "classification":
            ab = classification.annealed_mean(raw, self.centres, temperature, self.log_rebalance, correction)
        else:  # regression and GAN generators predict normalised ab
            ab = color.denormalize_ab(raw)
        if ab.shape[-2:] != x.shape[-2:]:  # fixed by the architecture, so the trace holds for every size
            ab = F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return ab


def write_decoded_bundle(net: UNet, ckpt, weights_sha256: str, example_size: tuple[int, int] = (64, 96)) -> None:
    """Export ``DecodedNetwork`` and its sidecar to the cache (``engines.runtime.bundle``), each atomically,
    the sidecar last."""
    graph, sidecar = bundle.paths(weights_sha256)
    module = DecodedNetwork(net, ckpt.family, ckpt.family_state).eval()
    example = torch.zeros(1, ckpt.arch.in_channels, *example_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    names, args = [INPUT_NAME], (example,)
    if ckpt.family == "classification":
        names, args = [INPUT_NAME, "temperature", "correction"], (example, torch.tensor(1.0), torch.tensor(0.0))
    with atomic_path(graph) as tmp, warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(tmp),
            input_names=names,
            output_names=["ab"],
            dynamic_axes={INPUT_NAME: axes, "ab": axes},
            opset_version=OPSET,
            dynamo=False,
        )
    state = ckpt.family_state
    meta = {
        "version": bundle.VERSION,
        "family": ckpt.family,
        "working_size": int(ckpt.working_size),
        "color_space": ckpt.color_space,
        "multiple": int(net.multiple),
        "in_channels": int(ckpt.arch.in_channels),
        "temperature": float(state.get("temperature", classification.DEFAULT_TEMPERATURE)),
        "correction": float(state.get("correction", 0.0)),
        "corrected": state.get("log_rebalance") is not None,
    }
    write_text(sidecar, json.dumps(meta, indent=1))
