"""The U-Net shared by the engines: lightness in, a chroma map out.

Designed for speed on CPU and GPU alike: a stride-2 stem (chroma is low-frequency, so the network
never works at full working resolution), four levels of plain 3x3 conv + BatchNorm + ReLU (folds into
convolutions at inference and exports cleanly to ONNX), and a cheap global-context branch at the
bottleneck so that scene-level evidence (outdoor vs indoor, sky vs water) reaches every pixel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    in_channels: int = 1
    out_channels: int = 2
    widths: tuple[int, ...] = (32, 64, 128, 256)
    # 1: output at input size; 2: at half size (the decoder's own resolution), for outputs with many
    # channels (classification logits) that the pipeline decodes before upsampling.
    output_stride: int = 1
    # "batch" (fast, folds into convolutions at inference) or "group" (per-sample statistics: batch
    # composition does not matter, e.g. when several training processes each see part of a batch).
    norm: str = "batch"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(
            in_channels=int(d["in_channels"]),
            out_channels=int(d["out_channels"]),
            widths=tuple(d["widths"]),
            output_stride=int(d.get("output_stride", 1)),
            norm=str(d.get("norm", "batch")),
        )


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, norm: str = "batch") -> nn.Sequential:
    layer = nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(min(8, cout), cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), layer, nn.ReLU(inplace=True))


class GlobalContext(nn.Module):
    """Adds an image-wide summary (average pool -> MLP) back onto every position."""

    def __init__(self, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.mlp(x.mean(dim=(2, 3)))
        return x + g[:, :, None, None]


class UNet(nn.Module):
    """``l_norm (N, in_channels, H, W)`` -> ``(N, out_channels, H / s, W / s)`` with ``s = output_stride``;
    H and W multiples of 16.

    The decoder stops at half resolution and the output is upsampled bilinearly: chroma needs no more.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        w = config.widths
        self.stem = nn.Sequential(
            _conv_bn_relu(config.in_channels, w[0], stride=2, norm=config.norm),
            _conv_bn_relu(w[0], w[0], norm=config.norm),
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                _conv_bn_relu(w[i], w[i + 1], stride=2, norm=config.norm),
                _conv_bn_relu(w[i + 1], w[i + 1], norm=config.norm),
            )
            for i in range(len(w) - 1)
        )
        self.context = nn.Sequential(_conv_bn_relu(w[-1], w[-1], norm=config.norm), GlobalContext(w[-1]))
        self.up = nn.ModuleList(
            nn.Sequential(
                _conv_bn_relu(w[i + 1] + w[i], w[i], norm=config.norm), _conv_bn_relu(w[i], w[i], norm=config.norm)
            )
            for i in reversed(range(len(w) - 1))
        )
        self.head = nn.Conv2d(w[0], config.out_channels, 1)

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** len(self.config.widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        h = self.context(skips.pop())
        for up in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = up(torch.cat((h, skip), dim=1))
        out = self.head(h)
        if self.config.output_stride == 2:
            return out
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)
