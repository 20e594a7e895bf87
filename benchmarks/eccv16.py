"""Zhang, Isola and Efros, "Colorful Image Colorization" (ECCV 2016): the network, re-implemented from
the paper's description for speed comparisons only. It is never trained here and its weights are
random: only its cost (FLOPs, time, memory) is measured, beside our engines, in the same run.

Eight blocks of 3x3 convolutions with ReLU, each ending in batch norm: 64, 128, 256 channels with a
stride-2 convolution ending each of the first three blocks, then 512 channels at 1/8 resolution
(blocks 5 and 6 dilated by 2), block 8 upsampling once to 1/4 with a 4x4 transposed convolution to
256 channels. A 1x1 convolution gives 313 ab-bin logits; softmax and a 1x1 convolution with the bin
centres as weights give ab (the annealed-mean decoding), upsampled 4x to the input's size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int, n: int, last_stride: int = 1, dilation: int = 1, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        stride = last_stride if i == n - 1 else 1
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, stride, dilation, dilation), nn.ReLU(inplace=True)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class ECCV16(nn.Module):
    multiple = 8  # three stride-2 stages

    def __init__(self, bins: int = 313):
        super().__init__()
        self.body = nn.Sequential(
            _block(1, 64, 2, last_stride=2),
            _block(64, 128, 2, last_stride=2),
            _block(128, 256, 3, last_stride=2),
            _block(256, 512, 3),
            _block(512, 512, 3, dilation=2),
            _block(512, 512, 3, dilation=2),
            _block(512, 512, 3),
            nn.ConvTranspose2d(512, 256, 4, 2, 1),
            nn.ReLU(inplace=True),
            _block(256, 256, 2, norm=False),
            nn.Conv2d(256, bins, 1),
        )
        self.to_ab = nn.Conv2d(bins, 2, 1, bias=False)  # weights: the ab bin centres

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        ab = self.to_ab(F.softmax(self.body(l_norm) / 0.38, dim=1))
        return F.interpolate(ab, scale_factor=4, mode="bilinear", align_corners=False)
