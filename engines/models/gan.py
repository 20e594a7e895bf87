"""GAN family (pix2pix, Isola et al. 2017): a U-Net generator predicting ab, trained against a PatchGAN
critic plus a weighted L1/L2 term. At inference only the generator runs, exactly like regression.

The generator may take a noise map as a second input channel, so that one photo can be coloured
several plausible ways (``seed`` picks the sample); the critic exists only in training.
"""

from __future__ import annotations

import torch
from torch import nn

from engines import color


def decode(raw: torch.Tensor, family_state: dict) -> torch.Tensor:
    """``ab_norm (N, 2, h, w)`` -> ab in CIELAB units."""
    return color.denormalize_ab(raw)


class PatchCritic(nn.Module):
    """70x70 PatchGAN (Isola et al. 2017): ``(N, 3, H, W)`` Lab (normalised) -> ``(N, 1, H/8 - 2, W/8 - 2)`` scores.

    C64-C128-C256-C512 with 4x4 convolutions (strides 2, 2, 2, 1), instance norm after all but the first,
    LeakyReLU 0.2; each output scores one 70x70 patch of the input.
    """

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for mult, stride in ((2, 2), (4, 2), (8, 1)):
            layers += [
                nn.Conv2d(c, width * mult, 4, stride, 1, bias=False),
                nn.InstanceNorm2d(width * mult, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c = width * mult
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, lab_norm: torch.Tensor) -> torch.Tensor:
        return self.net(lab_norm)


def with_noise(l_in: torch.Tensor, seed: int | None) -> torch.Tensor:
    """A generator's two-channel input: the gray input ``(N, 1, H, W)`` and a standard-normal noise
    map beside it; the same seed gives the same map (``None``: drawn from torch's global generator)."""
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    noise = torch.randn(l_in.shape, generator=g).to(l_in.device, l_in.dtype)
    return torch.cat((l_in, noise), dim=1)
