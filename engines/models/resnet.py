"""ResNet-18 (He et al. 2016), trained here from scratch as an image classifier.

The project uses it as a measuring instrument (``colorize eval``: a classifier's accuracy on coloured
photos as a stand-in for realism, and a Frechet distance on its pooled features) and, through
``stages()``, as an encoder. No pretrained weights can be downloaded on our machines, so the
classifiers in ``engines/weights/classifier-*.pt`` were trained by ``python -m training.classifier``.

The block layout is ResNet-18's (four stages of two basic blocks); widths and the stem are
configurable so that a 2-core CPU can train it: 32x32 photos take a stride-1 3x3 stem (as for CIFAR
in the paper), 64x64 photos a stride-2 stem and a max-pool.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from engines.models import saved

FORMAT = "colorize-classifier/1"
# Inputs are sRGB in [0, 1], standardised per channel with fixed values (those of ImageNet photos).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ResNetConfig:
    num_classes: int = 10
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # ResNet-18
    stem_stride: int = 1
    stem_pool: bool = False
    image_size: int = 32  # the size it was trained at; ``colorize eval`` resizes photos to it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ResNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        w0 = config.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, config.stem_stride, 1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1) if config.stem_pool else nn.Identity(),
        )
        stages, cin = [], w0
        for i, (w, n) in enumerate(zip(config.widths, config.blocks)):
            blocks = [BasicBlock(cin if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, config.num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def stage_outputs(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """sRGB ``(N, 3, H, W)`` in [0, 1] -> the output of the stem and of each stage (an encoder's skips)."""
        x = self.stem((rgb - self.mean) / self.std)
        outs = [x]
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled last-stage features ``(N, widths[-1])`` (the Frechet distance's space)."""
        return self.stage_outputs(rgb)[-1].mean((2, 3))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(rgb))


@dataclass
class ClassifierFile:
    """A trained classifier as shipped: architecture, class names, weights, and how it was made."""

    config: ResNetConfig
    classes: list[str]
    state_dict: dict[str, torch.Tensor]
    trained_on: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def build(self) -> ResNet:
        model = ResNet(self.config)
        model.load_state_dict(saved.float_state_dict(self.state_dict))
        return model.eval()


def save(cf: ClassifierFile, path: Path) -> None:
    """Write atomically, float weights as fp16 (half the size)."""
    payload = {
        "format": FORMAT,
        "config": cf.config.to_dict(),
        "classes": list(cf.classes),
        "state_dict": saved.stored_state_dict(cf.state_dict, half=True),
        "trained_on": cf.trained_on,
        "metrics": cf.metrics,
    }
    saved.write(payload, path)


def load(path: Path) -> ClassifierFile:
    payload = saved.read(path, FORMAT, "classifier file")
    return ClassifierFile(
        ResNetConfig.from_dict(payload["config"]),
        list(payload["classes"]),
        payload["state_dict"],
        payload.get("trained_on", {}),
        payload.get("metrics", {}),
    )
