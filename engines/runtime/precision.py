"""Reduced precision on the CPU: which instructions this CPU has, and the engines under bf16 autocast.

On CPUs with bf16 in hardware (AMX or AVX-512 BF16) the CPU backend runs the engines under bf16
autocast: measured 1.4-2x float32's speed at the shipped working size (96) and 2-3.7x at 224-256
on a 2-core Xeon with AMX, also faster than ONNX Runtime there (``benchmarks/results/speed.md``).
Elsewhere (AVX2) bf16 is emulated and several times slower, so float32 is used.
"""

from __future__ import annotations

import torch

from engines.runtime.host import cpu_flags, cpu_has_fast_bf16  # noqa: F401 - re-exported

# bf16 against float32, largest |ab| difference allowed (CIELAB units), tested on a small input on any
# CPU (tests/test_runtime.py): measured max 0.11 (regression), 0.51 (classification), 1.08 (gan) on
# a 128x128 photo; bf16 keeps 8 bits of mantissa against float16's 11.
BF16_MAX_AB_DIFF = 3.0


class Bf16Model(torch.nn.Module):
    """The network under CPU autocast to bfloat16, float32 out; its ab difference from float32 is
    bounded by ``BF16_MAX_AB_DIFF`` in tests on any CPU (autocast runs, emulated, on AVX2 too)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        self.multiple = net.multiple
        self.config = net.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(x).float()


def float32_network(model: torch.nn.Module) -> torch.nn.Module:
    """The float32 network inside ``Bf16Model``, else ``model`` itself: what ONNX export and a float32
    runner take."""
    return model.net if isinstance(model, Bf16Model) else model
