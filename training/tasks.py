"""Tasks plug a model family into the one training loop: each owns its networks, losses and
optimisers, and ``step()`` returns a dict of scalars."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from engines import classification, color
from engines.metrics import ab_bin_index, rebalance_weights
from engines.unet import UNet, UNetConfig
from training import distributed
from training.config import TrainConfig


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up, then cosine decay to 5% at ``max_steps``."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return f


class _SingleNetworkTask:
    """What every one-network family shares: the U-Net, AdamW with warm-up + cosine, the state."""

    family = ""

    def __init__(self, cfg: TrainConfig, arch: UNetConfig, ab_prior: torch.Tensor):
        self.cfg = cfg
        self.model = UNet(arch)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        # Per-ab-bin loss weights (Zhang et al.'s class rebalancing), or None.
        self.pixel_weights = (
            rebalance_weights(ab_prior, lam=cfg.rebalance_lambda, sigma_bins=0.5) if cfg.rebalance_lambda > 0 else None
        )
        self.device = torch.device("cpu")
        self.net: torch.nn.Module = self.model  # what the training step calls (DDP-wrapped when distributed)

    def place(self, info: distributed.DistInfo) -> None:
        """Move to this process's device and wrap for DDP when there are several processes."""
        self.device = info.device
        self.model.to(self.device)
        if self.pixel_weights is not None:
            self.pixel_weights = self.pixel_weights.to(self.device)
        self.net = distributed.wrap(self.model, info)

    def loss(self, l_norm: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        """The network's raw output -> ab in CIELAB units (at the output's resolution)."""
        raise NotImplementedError

    def family_state(self) -> dict:
        return {}

    def _weighted_mean(self, per_pixel: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        if self.pixel_weights is not None:
            per_pixel = per_pixel * self.pixel_weights[ab_bin_index(ab_true)]
        return per_pixel.mean()

    def step(self, rgb: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch of sRGB crops ``(B, 3, S, S)`` in [0, 1]."""
        self.net.train()
        lab = color.rgb_to_lab(rgb.to(self.device, non_blocking=True))
        # bfloat16 autocast on GPU (unverified here: no GPU); colour conversion stays in float32.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.loss(color.normalize_l(lab[:, :1]), lab[:, 1:])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return {"loss": float(loss.detach()), "lr": self.sched.get_last_lr()[0]}

    @torch.inference_mode()
    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        """L ``(B, 1, H, W)`` in [0, 100] -> ab ``(B, 2, H, W)`` in CIELAB units."""
        self.model.eval()
        ab = self.decode(self.model(color.normalize_l(l.to(self.device))).float())
        if ab.shape[-2:] != l.shape[-2:]:
            ab = F.interpolate(ab, size=l.shape[-2:], mode="bilinear", align_corners=False)
        return ab.cpu()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])


class RegressionTask(_SingleNetworkTask):
    """Predict normalised ab from normalised L with an L1, L2 or Huber loss, optionally class-rebalanced."""

    family = "regression"

    def __init__(self, cfg: TrainConfig, ab_prior: torch.Tensor):
        super().__init__(cfg, UNetConfig(widths=cfg.widths, norm=cfg.norm), ab_prior)

    def loss(self, l_norm: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        pred, target = self.net(l_norm).float(), color.normalize_ab(ab_true)
        if self.cfg.loss == "l1":
            per_pixel = (pred - target).abs().sum(1)
        elif self.cfg.loss == "l2":
            per_pixel = (pred - target).square().sum(1)
        else:
            per_pixel = F.smooth_l1_loss(pred, target, beta=self.cfg.huber_delta, reduction="none").sum(1)
        return self._weighted_mean(per_pixel, ab_true)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return color.denormalize_ab(raw)


class ClassificationTask(_SingleNetworkTask):
    """Zhang et al. 2016: cross-entropy against soft-encoded ab bins, class-rebalanced.

    Logits come at half resolution (the decoder's own), and targets are taken from ab averaged
    over 2x2 blocks: chroma is smooth, and this quarters the cost of the Q-channel output.
    """

    family = "classification"

    def __init__(self, cfg: TrainConfig, ab_prior: torch.Tensor):
        self.centres = classification.bin_centres(ab_prior)
        arch = UNetConfig(out_channels=len(self.centres), widths=cfg.widths, output_stride=2, norm=cfg.norm)
        super().__init__(cfg, arch, ab_prior)

    def place(self, info: distributed.DistInfo) -> None:
        super().place(info)
        self.centres = self.centres.to(self.device)

    def loss(self, l_norm: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        logits = self.net(l_norm).float()
        ab_half = F.avg_pool2d(ab_true, 2)
        target = classification.soft_encode(ab_half, self.centres)
        per_pixel = -(target * F.log_softmax(logits, dim=1)).sum(1)
        return self._weighted_mean(per_pixel, ab_half)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return classification.decode_distribution(raw, self.centres)

    def family_state(self) -> dict:
        return {"ab_centres": self.centres.cpu(), "temperature": classification.DEFAULT_TEMPERATURE}


TASKS = {"regression": RegressionTask, "classification": ClassificationTask}
