"""The checkpoint format: one ``torch.save`` dict that says how to rebuild the model.

Loading uses ``weights_only=True``, so a checkpoint can hold tensors and plain Python values only and
loading one never runs code. Keys:

- ``format``: ``FORMAT`` (bumped on incompatible change)
- ``family``: engine family (``"regression"``)
- ``arch``: ``UNetConfig.to_dict()``
- ``color_space``: ``"lab"`` (the model predicts normalised ab from normalised L) or ``"yuv"``
  (normalised UV from Y; see ``engines.color.COLOR_SPACES``)
- ``working_size``: the long side, in pixels, at which the engine colours a photo
- ``state_dict``: the model's weights
- ``trained_on``: what data and recipe produced it (provenance, free-form plain values)
- ``metrics``: held-out figures measured when it was saved (free-form plain values)
- ``family_state``: what the family needs to decode the network's output (e.g. the ab bin centres
  of a classification engine); empty for regression
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.models import saved
from engines.models.unet import UNet, UNetConfig

FORMAT = "colorize-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a usable colorize checkpoint."""


@dataclass
class EngineCheckpoint:
    family: str
    arch: UNetConfig
    state_dict: dict[str, torch.Tensor]
    color_space: str = "lab"
    working_size: int = 128
    trained_on: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    family_state: dict = field(default_factory=dict)

    def build_model(self) -> UNet:
        model = UNet(self.arch)
        model.load_state_dict(saved.float_state_dict(self.state_dict))
        return model.eval()


def save(ckpt: EngineCheckpoint, path: Path, half: bool = False) -> None:
    """Write atomically (temporary name, then rename). ``half`` stores float weights as fp16 to halve the file."""
    payload = {
        "format": FORMAT,
        "family": ckpt.family,
        "arch": ckpt.arch.to_dict(),
        "color_space": ckpt.color_space,
        "working_size": ckpt.working_size,
        "state_dict": saved.stored_state_dict(ckpt.state_dict, half),
        "trained_on": ckpt.trained_on,
        "metrics": ckpt.metrics,
        "family_state": ckpt.family_state,
    }
    saved.write(payload, path)


def load(path: Path) -> EngineCheckpoint:
    try:
        payload = saved.read(path, FORMAT, "checkpoint")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if payload.get("color_space") not in ("lab", "yuv"):
        raise CheckpointError(f"{path}: unknown colour space {payload.get('color_space')!r}")
    return EngineCheckpoint(
        family=payload["family"],
        arch=UNetConfig.from_dict(payload["arch"]),
        state_dict=payload["state_dict"],
        color_space=payload["color_space"],
        working_size=int(payload["working_size"]),
        trained_on=payload.get("trained_on", {}),
        metrics=payload.get("metrics", {}),
        family_state=payload.get("family_state", {}),
    )
