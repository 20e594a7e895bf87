"""Regression family: the network predicts normalised ab directly (L1, L2 or Huber loss in training)."""

from __future__ import annotations

import torch

from engines import color


def decode(raw: torch.Tensor, family_state: dict) -> torch.Tensor:
    """``ab_norm (N, 2, h, w)`` -> ab in CIELAB units."""
    return color.denormalize_ab(raw)
