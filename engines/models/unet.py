"""The U-Net shared by the engines: lightness in, a chroma map out.

Designed for speed on CPU and GPU alike: a stride-2 stem (chroma is low-frequency, so the network
never works at full working resolution), four levels of plain 3x3 conv + BatchNorm + ReLU (folds into
convolutions at inference and exports cleanly to ONNX), and a cheap global-context branch at the
bottleneck so that scene-level evidence (outdoor vs indoor, sky vs water) reaches every pixel.

``encoder = "resnet18"`` swaps the plain encoder for a ResNet-18 (``engines.models.resnet``) that the project
pre-trains as an image classifier (DeOldify's recipe, with an encoder we train ourselves): it sees the
gray picture as sRGB, as the classifier saw colour photos, so its semantic features carry over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.utils.fusion
from torch import nn
from torch.nn import functional as F

from engines import color
from engines.models.resnet import ResNet, ResNetConfig

ENCODERS = ("plain", "resnet18")


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
    # "plain" (conv stages, stride-2 stem) or "resnet18" (ResNet-18 stages of these widths, stride-2
    # stem + max-pool; its stem and stages can be copied from a trained classifier, see
    # ``UNet.load_encoder``).
    encoder: str = "plain"
    # How the first input channel encodes lightness ("lab": normalised L; "yuv": 2Y - 1): the ResNet
    # encoder turns it back into the sRGB gray its classifier was trained on.
    color_space: str = "lab"

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
            encoder=str(d.get("encoder", "plain")),
            color_space=str(d.get("color_space", "lab")),
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
        if config.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, not {config.encoder!r}")
        self.config = config
        w = config.widths
        if config.encoder == "resnet18":
            self.encoder = ResNetEncoder(config)
            skips = self.encoder.channels
        else:
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
            skips = w
        self.context = nn.Sequential(_conv_bn_relu(skips[-1], skips[-1], norm=config.norm), GlobalContext(skips[-1]))
        self.up = nn.ModuleList(
            nn.Sequential(
                _conv_bn_relu(skips[i + 1] + skips[i], skips[i], norm=config.norm),
                _conv_bn_relu(skips[i], skips[i], norm=config.norm),
            )
            for i in reversed(range(len(skips) - 1))
        )
        self.head = nn.Conv2d(skips[0], config.out_channels, 1)

    def fold_batch_norm(self) -> UNet:
        """For inference: each BatchNorm that follows a convolution in a Sequential (every one of the plain
        encoder and of the decoder; the ResNet blocks' keep theirs) becomes part of that convolution's
        weights and bias (eval-mode statistics; the same function up to float rounding), one pass over
        the activations fewer per layer, and under bf16 autocast no round trip to float32 for the norm
        (which autocast runs in float32). ONNX Runtime and TensorRT fold it themselves; PyTorch does
        not. In place; returns the network."""
        if self.training:
            raise RuntimeError("fold_batch_norm is for inference: call eval() first")
        for seq in [m for m in self.modules() if isinstance(m, nn.Sequential)]:
            for i in range(len(seq) - 1):
                conv, norm = seq[i], seq[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    seq[i] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
                    seq[i + 1] = nn.Identity()
        return self

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.config.widths) + (self.config.encoder == "resnet18"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.config.encoder == "resnet18":
            skips = self.encoder(x)
        else:
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


class ResNetEncoder(nn.Module):
    """ResNet-18 stages as a U-Net encoder: ``(N, C, H, W)`` -> skips at strides 2, 4, 8, 16, 32.

    Channel 0 is lightness (see ``UNetConfig.color_space``), turned into the sRGB gray replicated to
    three channels; extra channels (the GAN's noise) enter through a convolution added to the stem's
    output, zero at initialisation so that a trained classifier's stem starts unchanged.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.color_space = config.color_space
        resnet = ResNet(ResNetConfig(widths=tuple(config.widths), stem_stride=2, stem_pool=True))
        self.register_buffer("mean", resnet.mean.clone(), persistent=False)
        self.register_buffer("std", resnet.std.clone(), persistent=False)
        self.stem, self.stages = resnet.stem, resnet.stages
        w0 = config.widths[0]
        self.extra = nn.Conv2d(config.in_channels - 1, w0, 3, 2, 1, bias=False) if config.in_channels > 1 else None
        if self.extra is not None:
            nn.init.zeros_(self.extra.weight)
        self.channels = (w0, *config.widths)

    def load_classifier(self, config: ResNetConfig, state_dict: dict[str, torch.Tensor]) -> int:
        """Copy a trained classifier's stem and stages (``engines.models.resnet.ClassifierFile``); returns the
        number of tensors copied. The classifier must have this encoder's layout."""
        mine = ResNetConfig(widths=config.widths, stem_stride=2, stem_pool=True)
        if (config.widths, config.blocks, config.stem_stride, config.stem_pool) != (
            mine.widths,
            mine.blocks,
            mine.stem_stride,
            mine.stem_pool,
        ) or tuple(config.widths) != tuple(self.channels[1:]):
            raise ValueError(
                f"classifier layout (widths {list(config.widths)}, stem stride {config.stem_stride}, "
                f"pool {config.stem_pool}) does not match this encoder (widths {list(self.channels[1:])}, "
                "stem stride 2, pool)"
            )
        own = self.state_dict()
        taken = {k: v for k, v in state_dict.items() if k.split(".")[0] in ("stem", "stages") and k in own}
        self.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in taken.items()}})
        return len(taken)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = x[:, :1]
        if self.color_space == "lab":
            gray = color.lightness_to_gray_value(first * color.L_SCALE + color.L_CENTER)
        else:
            gray = (first + 1) / 2
        h = self.stem[:3]((gray - self.mean) / self.std)  # conv, norm, ReLU: stride 2
        if self.extra is not None:
            h = h + self.extra(x[:, 1:])
        skips = [h]
        h = self.stem[3](h)  # max-pool: stride 4
        for stage in self.stages:
            h = stage(h)
            skips.append(h)
        return skips
