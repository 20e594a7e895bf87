"""Tasks plug a model family into the one training loop: each owns its networks, losses and
optimisers. What the loop asks of a task class (``TASKS[family]``):

- ``load_data(cfg, cache_dir) -> TaskData``: the sampler's training arrays, the validation data, and
  what the constructor takes beside the recipe; then ``task = cls(cfg, data.given)``
- ``place(info)``, ``precision``; ``step(batch)`` returns a dict of scalars (``batch`` is the sampler's,
  with the images' indices when ``batch_with_index``)
- ``validate(data.val)``: held-out figures, ``score`` among them (higher is better: it picks the best)
- ``export(metrics, step, path)`` writes the deliverable (``best_file`` in the run folder);
  ``write_figures(data.val, out_dir, step)``; ``state_dict()`` / ``load_state_dict()``; ``warm_start(path)``

The colour families (regression, classification, GAN) share ``_SingleNetworkTask``; ``ClassifierTask``
is the ResNet image classifier (``python -m training.classifier``).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from engines import color
from engines.media.crop import centre_square
from engines.metrics import AbErrorCurve, ab_bin_index, ab_histogram, colourfulness, rebalance_weights
from engines.models import checkpoint, classification, gan, resnet
from engines.models.unet import UNet, UNetConfig
from engines.runtime import backends as runtime
from training import degrade, distributed, figures
from training.config import TrainConfig
from training.data import DataError, labelled_sets, training_sets, training_sets_with_classes


@dataclass
class TaskData:
    """A family's data for one run: the sampler's training arrays (one per source, a repeated source
    listed again), what ``validate`` takes, and what the task's constructor takes beside the recipe."""

    train: list[np.ndarray]
    val: Any
    given: Any


@dataclass
class ColourGiven:
    """What a colour family's constructor takes beside the recipe: the chroma prior and, for the
    semantic loss (``class_loss_weight``), each training image's class index in the sampler's order."""

    prior: torch.Tensor
    train_labels: np.ndarray | None = None
    classes: tuple[str, ...] = ()


def as_colour_given(given: torch.Tensor | ColourGiven) -> ColourGiven:
    """A colour task's ``given``: a prior alone (benchmarks, tests) stands for a run without classes."""
    return given if isinstance(given, ColourGiven) else ColourGiven(given)


def network_config(cfg: TrainConfig, **kw) -> UNetConfig:
    """The U-Net a recipe asks for; ``kw`` adds what the family decides (channels, output stride)."""
    return UNetConfig(widths=cfg.widths, norm=cfg.norm, encoder=cfg.encoder, color_space=cfg.color_space, **kw)


def resolve_precision(choice: str, device: torch.device) -> tuple[bool, str]:
    """``(use bf16 autocast, why)`` for a recipe's ``precision`` on this device."""
    if choice == "float32":
        return False, "float32 (asked for)"
    if choice == "bfloat16":
        return True, "bfloat16 autocast (asked for)"
    if device.type == "cuda":
        return True, "bfloat16 autocast (GPU)"
    if runtime.cpu_has_fast_bf16():
        return True, "bfloat16 autocast (this CPU has AVX-512 BF16 or AMX)"
    return False, "float32 (this CPU has no bf16 in hardware: emulated bf16 is slower)"


def chroma_prior(train_sets: list[np.ndarray], space: str = "lab") -> torch.Tensor:
    """Chroma histogram (ab-like units, see ``engines.color.split_chroma``) of a sample of the training
    images: the prior for rebalancing and classification bins."""
    hist = torch.zeros(22 * 22, dtype=torch.float64)
    g = np.random.default_rng(0)
    for arr in train_sets:
        idx = g.choice(len(arr), size=min(len(arr), 5000), replace=False)
        x = torch.from_numpy(arr[np.sort(idx)]).permute(0, 3, 1, 2).float() / 255
        for i in range(0, len(x), 1000):
            hist += ab_histogram(color.split_chroma(x[i : i + 1000], space)[1])
    return hist


@dataclass
class ColourValidation:
    """The colour families' held-out images (sRGB ``(N, 3, S, S)`` in [0, 1]) and the CIELAB ab prior's
    weights the rebalanced AuC uses."""

    rgb: torch.Tensor
    metric_weights: torch.Tensor


def _centre(arr: np.ndarray, size: int) -> np.ndarray:
    """Whole (square) images resized to the crop size, so validation sees the same framing for every source."""
    if arr.shape[1] == size:
        return arr
    return np.stack([centre_square(a, size) for a in arr])


def colour_data(cfg: TrainConfig, cache_dir: Path) -> TaskData:
    """Colour images (gray dropped) split per source, the chroma prior, and a fixed subset of
    validation images as centre crops at the training crop size."""
    labels, classes = None, ()
    if cfg.class_loss_weight:
        train_sets, val_sets, labels, classes = training_sets_with_classes(
            cfg.sources, cfg.source_sizes, cfg.source_repeats, cfg.val_fraction, cache_dir
        )
    else:
        train_sets, val_sets = training_sets(
            cfg.sources, cfg.source_sizes, cfg.source_repeats, cfg.val_fraction, cache_dir
        )
    if not train_sets or sum(len(t) for t in train_sets) == 0:
        raise DataError("no colour training images found in the configured sources")
    if sum(len(v) for v in val_sets) == 0:
        raise DataError("no images left for validation: give more images or films, or raise val_fraction")
    # Metrics are always in CIELAB; the engine's own prior is in the space it predicts.
    prior = chroma_prior(train_sets)
    metric_weights = rebalance_weights(prior, lam=0.0)
    if cfg.color_space != "lab":
        prior = chroma_prior(train_sets, cfg.color_space)
    val_u8 = np.concatenate([_centre(v, cfg.crop_size) for v in val_sets])
    val_u8 = val_u8[np.random.default_rng(1).permutation(len(val_u8))[: cfg.val_images]]
    val_rgb = torch.from_numpy(val_u8).permute(0, 3, 1, 2).float() / 255
    return TaskData(train_sets, ColourValidation(val_rgb, metric_weights), ColourGiven(prior, labels, tuple(classes)))


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up, then cosine decay to 5% at ``max_steps``."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    return f


class WeightAverage:
    """An exponential moving average of a network's weights and buffers (BatchNorm statistics too),
    ``average <- decay * average + (1 - decay) * current`` after every step; integer buffers are copied.

    At a steady learning rate the weights of any one step carry that step's noise (snapshots a few
    hundred steps apart differ by 0.3-0.5 AuC on the tuning photos); the average over the last
    ``1 / (1 - decay)`` steps is close to where a decayed rate would settle, at no cost to training.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        floats = [(a, c) for a, c in pairs if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [c.detach() for _, c in floats], 1 - self.decay)
        for a, c in pairs:
            if not a.is_floating_point():
                a.copy_(c)


class SemanticHead(torch.nn.Module):
    """Iizuka et al. 2016's auxiliary task: the image's class (its folder: Tiny ImageNet's 200, the scene
    set's 6) predicted from the U-Net's global features (the bottleneck after its context block,
    averaged over the image), so that the features that choose colours also say what the scene is. It
    only trains: the engine never runs it and its weights are not exported."""

    def __init__(self, channels: int, n_classes: int):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(channels, channels), torch.nn.ReLU(inplace=True), torch.nn.Linear(channels, n_classes)
        )

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.mlp(bottleneck.float().mean(dim=(2, 3)))


class _Resumable:
    """The resumable state every task with one model, one optimiser and one schedule shares, and the
    weight average when the recipe asks for one (``ema_decay``)."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: WeightAverage | None = None
    semantic: SemanticHead | None = None  # the colour families' semantic loss, when the recipe asks for it

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, exported and shipped: the average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def degraded_input(self, l_in: torch.Tensor) -> torch.Tensor:
        """The network's lightness input ``[-1, 1]`` degraded as the recipe's ``degrade_input`` asks
        (``training.degrade``), drawn by the run's seed and the schedule's step (restored on resume)."""
        if not self.cfg.degrade_input:
            return l_in
        gen = degrade.step_generator(self.cfg.seed, self.sched.last_epoch)
        info = getattr(self, "info", None)  # set by place(); several processes each hold a share of the batch
        share = (info.rank * len(l_in), len(l_in) * info.world) if info is not None else (0, len(l_in))
        x = degrade.degrade_lightness((l_in.float() + 1) / 2, self.cfg.degrade_input, gen, *share)
        return (x * 2 - 1).to(l_in.dtype)

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.model.state_dict()
        if self.semantic is not None:
            state["semantic"] = {"head": self.semantic.state_dict(), "opt": self.semantic_opt.state_dict()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.ema is not None:
            # A run saved before it averaged starts its average from the weights it resumes with.
            self.ema.model.load_state_dict(state.get("ema", state["model"]))
        # A run saved without the semantic head (a branch of one) starts its head fresh.
        if self.semantic is not None and "semantic" in state:
            self.semantic.load_state_dict(state["semantic"]["head"])
            self.semantic_opt.load_state_dict(state["semantic"]["opt"])


class _SingleNetworkTask(_Resumable):
    """What every one-network family shares: the U-Net, AdamW with warm-up + cosine, the state."""

    family = ""
    best_file = "engine.pt"

    @classmethod
    def load_data(cls, cfg: TrainConfig, cache_dir: Path) -> TaskData:
        return colour_data(cfg, cache_dir)

    def __init__(self, cfg: TrainConfig, arch: UNetConfig, given: torch.Tensor | ColourGiven):
        given = as_colour_given(given)
        ab_prior = given.prior
        self.cfg = cfg
        self.model = UNet(arch)
        if cfg.class_loss_weight:
            if given.train_labels is None or not given.classes:
                raise DataError("class_loss_weight needs the training images' classes (their folders)")
            self._make_semantic_head(torch.from_numpy(given.train_labels), len(given.classes))
        if cfg.encoder_from:
            clf = resnet.load(Path(cfg.encoder_from))
            self.model.encoder.load_classifier(clf.config, clf.state_dict)
        self.opt = torch.optim.AdamW(self._param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        # Per-ab-bin loss weights (Zhang et al.'s class rebalancing), or None.
        self.pixel_weights = (
            rebalance_weights(ab_prior, lam=cfg.rebalance_lambda, sigma_bins=0.5) if cfg.rebalance_lambda > 0 else None
        )
        self.device = torch.device("cpu")
        self.net: torch.nn.Module = self.model  # what the training step calls (DDP-wrapped when distributed)
        self.bf16, self.precision = resolve_precision(cfg.precision, self.device)
        self.memory_format = torch.contiguous_format

    def _param_groups(self) -> list[dict]:
        encoder = getattr(self.model, "encoder", None)
        if encoder is None or self.cfg.encoder_lr_scale == 1.0:
            return [{"params": list(self.model.parameters())}]
        ids = {id(p) for p in encoder.parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": list(encoder.parameters()), "lr": self.cfg.lr * self.cfg.encoder_lr_scale}]

    def _make_semantic_head(self, train_labels: torch.Tensor, n_classes: int) -> None:
        """The auxiliary head, its own optimiser (so that a run saved without it resumes with it), and a
        hook that keeps the bottleneck of the latest forward pass for it."""
        self.train_labels = train_labels
        self.semantic = SemanticHead(self.model.config.widths[-1], n_classes)
        self.semantic_opt = torch.optim.AdamW(
            self.semantic.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self._bottleneck: list[torch.Tensor] = []
        # Training passes only: the weight average (a copy, hooks included) and validation leave it alone.
        self.model.context.register_forward_hook(
            lambda m, _i, out: self._bottleneck.append(out) if m.training else None
        )

    def place(self, info: distributed.DistInfo) -> None:
        """Move to this process's device and wrap for DDP when there are several processes."""
        self.info = info
        self.device = info.device
        self.bf16, self.precision = resolve_precision(self.cfg.precision, self.device)
        # bf16 convolutions run fastest channels-last (oneDNN and cuDNN); float32 on the CPU keeps the
        # layout it was measured with.
        self.memory_format = torch.channels_last if self.bf16 else torch.contiguous_format
        self._place_networks()
        if self.pixel_weights is not None:
            self.pixel_weights = self.pixel_weights.to(self.device)
        self.net = distributed.wrap(self.model, info)
        # Made here, from the warm-started weights on their device (a resumed run loads it after).
        self.ema = WeightAverage(self.model, self.cfg.ema_decay) if self.cfg.ema_decay else None

    def _place_networks(self) -> None:
        self.model.to(self.device, memory_format=self.memory_format)
        if self.semantic is not None:
            self.semantic.to(self.device)

    def autocast(self):
        """The forward passes' precision context (losses and colour conversion stay float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def warm_start(self, path: str) -> list[str]:
        """Copy same-named, same-shaped weights from an engine checkpoint; returns the names copied.

        A first convolution with more input channels here (the GAN's noise channel) takes the old
        weights for the channels they share and zeros for the new ones, so it starts as the old model did.
        """
        source = checkpoint.load(Path(path)).state_dict
        own = self.model.state_dict()
        copied = []
        for name, value in source.items():
            if name not in own:
                continue
            mine, value = own[name], value.to(own[name].dtype)
            if mine.shape == value.shape:
                mine.copy_(value)
            elif mine.ndim == 4 and mine.shape[0] == value.shape[0] and mine.shape[1] > value.shape[1]:
                mine.zero_()
                mine[:, : value.shape[1]] = value
            else:
                continue
            copied.append(name)
        return copied

    def loss(self, l_norm: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        """``l_norm``: the network input; ``ab_true``: chroma in ab-like units (``engines.color.split_chroma``)."""
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

    @property
    def batch_with_index(self) -> bool:
        return self.semantic is not None  # the classes are looked up by the images' indices

    def step(self, batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on a batch of sRGB crops ``(B, 3, S, S)`` in [0, 1] (with the images'
        indices when the semantic loss is on)."""
        rgb, idx = batch if self.semantic is not None else (batch, None)
        self.net.train()
        l_in, chroma = color.split_chroma(rgb.to(self.device, non_blocking=True), self.cfg.color_space)
        l_in = self.degraded_input(l_in)
        with self.autocast():
            loss = self.loss(self._layout(l_in), chroma)
        scalars = {}
        if idx is not None:
            colour_loss, class_loss = loss, self._class_loss(idx)
            loss = colour_loss + self.cfg.class_loss_weight * class_loss
            scalars = {"colour_loss": float(colour_loss.detach()), "class_loss": float(class_loss.detach())}
            self.semantic_opt.zero_grad(set_to_none=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if idx is not None:
            distributed.average_gradients(self.semantic, self.info)  # the head is not DDP-wrapped
            for group in self.semantic_opt.param_groups:  # the network's schedule
                group["lr"] = self.sched.get_last_lr()[0]
            self.semantic_opt.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {"loss": float(loss.detach()), **scalars, "lr": self.sched.get_last_lr()[0]}

    def _class_loss(self, idx: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the semantic head on the bottleneck the colour loss's forward pass left."""
        bottleneck = self._bottleneck.pop()
        self._bottleneck.clear()
        labels = self.train_labels[idx].to(self.device)
        return F.cross_entropy(self.semantic(bottleneck), labels, ignore_index=-1)

    @torch.inference_mode()
    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        """L ``(B, 1, H, W)`` in [0, 100] -> ab ``(B, 2, H, W)`` in CIELAB units."""
        model = self.eval_model.eval()
        chroma = self.decode(model(self._input(l)).float()).cpu()
        if chroma.shape[-2:] != l.shape[-2:]:
            chroma = F.interpolate(chroma, size=l.shape[-2:], mode="bilinear", align_corners=False)
        return color.chroma_to_ab(l, chroma, self.cfg.color_space)

    def _input(self, l: torch.Tensor) -> torch.Tensor:
        return color.input_from_lightness(l.to(self.device), self.cfg.color_space)

    def validate(self, val: ColourValidation) -> dict[str, float]:
        """Held-out figures for the model and, alongside, for an all-gray prediction; ``score`` is the
        mean of the plain and rebalanced AuC."""
        curve, gray = AbErrorCurve(val.metric_weights), AbErrorCurve(val.metric_weights)
        colorful_pred, colorful_true = [], []
        for i in range(0, len(val.rgb), 256):
            rgb = val.rgb[i : i + 256]
            lab = color.rgb_to_lab(rgb)
            ab = self.predict_ab(lab[:, :1])
            curve.update(ab, lab[:, 1:])
            gray.update(torch.zeros_like(ab), lab[:, 1:])
            colorful_pred.append(colourfulness(color.lab_to_rgb_keep_lightness(lab[:, :1], ab)))
            colorful_true.append(colourfulness(rgb))
        held_out = {
            "auc": curve.auc(),
            "auc_rebal": curve.auc_rebalanced(),
            "gray_auc": gray.auc(),
            "gray_auc_rebal": gray.auc_rebalanced(),
            "colourfulness": float(torch.cat(colorful_pred).mean()),
            "colourfulness_true": float(torch.cat(colorful_true).mean()),
        }
        held_out["score"] = (held_out["auc"] + held_out["auc_rebal"]) / 2
        return held_out

    def write_figures(self, val: ColourValidation, out_dir: Path, step: int) -> None:
        """The sample grid of the same validation images every time (step 0: before training) and, once
        there is a validation, the curves."""
        figures.write_samples(self, val.rgb[:8], out_dir, step)
        if step:
            figures.write_curves(out_dir / "log.jsonl", out_dir / "curves.png")

    def export(self, metrics: dict, step: int, path: Path) -> None:
        """The engine file ``colorize`` loads (fp16 weights)."""
        checkpoint.save(
            checkpoint.EngineCheckpoint(
                family=self.family,
                arch=self.model.config,
                color_space=self.cfg.color_space,
                state_dict=self.eval_model.state_dict(),
                working_size=self.cfg.working_size,
                trained_on={
                    "recipe": self.cfg.to_dict(),
                    "step": step,
                    "images_seen": step * self.cfg.batch_size,
                    "precision": self.precision,
                },
                metrics=metrics,
                family_state=self.family_state(),
            ),
            path,
            half=True,
        )


class RegressionTask(_SingleNetworkTask):
    """Predict normalised ab from normalised L with an L1, L2 or Huber loss, optionally class-rebalanced."""

    family = "regression"

    def __init__(self, cfg: TrainConfig, given: torch.Tensor | ColourGiven):
        super().__init__(cfg, network_config(cfg), given)

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


def soft_cross_entropy(logits: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy of logits ``(N, Q, h, w)`` (any float type; computed in float32) against
    a soft target with only ``k`` non-zero bins ``idx``/``weights`` ``(N, k, h, w)`` (weights sum to 1):
    logsumexp(logits) - sum_k w_k logits_k, without building the dense Q-channel target."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=1) - (weights * logits.gather(1, idx)).sum(1)


@functools.cache
def _compiled_soft_cross_entropy():
    """``soft_cross_entropy`` compiled (``compile_loss``); built on first use, once per process."""
    return torch.compile(soft_cross_entropy)


class ClassificationTask(_SingleNetworkTask):
    """Zhang et al. 2016: cross-entropy against soft-encoded ab bins, class-rebalanced.

    Logits come at half resolution (the decoder's own), and targets are taken from ab averaged
    over 2x2 blocks: chroma is smooth, and this quarters the cost of the Q-channel output.
    """

    family = "classification"

    def __init__(self, cfg: TrainConfig, given: torch.Tensor | ColourGiven):
        given = as_colour_given(given)
        self.centres = classification.bin_centres(given.prior)
        self.soft_encoder = classification.SoftEncoder(self.centres)
        arch = network_config(cfg, out_channels=len(self.centres), output_stride=2)
        super().__init__(cfg, arch, given)

    def place(self, info: distributed.DistInfo) -> None:
        super().place(info)
        self.centres = self.centres.to(self.device)
        self.soft_encoder.to(self.device)

    def loss(self, l_norm: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        logits = self.net(l_norm)
        ab_half = F.avg_pool2d(ab_true, 2)
        idx, weights = self.soft_encoder(ab_half)
        soft_ce = _compiled_soft_cross_entropy() if self.cfg.compile_loss else soft_cross_entropy
        return self._weighted_mean(soft_ce(logits, idx, weights), ab_half)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return classification.decode_distribution(raw, self.centres)

    def warm_start(self, path: str) -> list[str]:
        """As for any family, but a classification head's rows follow their ab bins: when this run's
        data has other in-gamut bins than the engine's, each bin both share takes its own row, and new
        bins keep their fresh initialisation (copying rows by position would mislabel them)."""
        source = checkpoint.load(Path(path))
        theirs = source.family_state.get("ab_centres")
        if source.family != "classification" or theirs is None or torch.equal(theirs, self.centres.cpu()):
            return super().warm_start(path)
        head = {name: self.model.state_dict()[name].clone() for name in ("head.weight", "head.bias")}
        copied = super().warm_start(path)
        mine = self.centres.cpu()
        match = (mine[:, None] - theirs[None]).abs().sum(-1) < 1e-3  # (Q mine, Q theirs)
        rows, cols = torch.nonzero(match, as_tuple=True)
        own = self.model.state_dict()
        remapped = []
        for name, fresh in head.items():
            value = source.state_dict.get(name)
            if value is None or value.shape[1:] != fresh.shape[1:]:  # another network: the head stays fresh
                own[name].copy_(fresh)
                continue
            fresh[rows] = value.to(fresh.dtype)[cols]
            own[name].copy_(fresh)
            remapped.append(name)
        return [*[n for n in copied if n not in head], *remapped]

    def family_state(self) -> dict:
        state = {"ab_centres": self.centres.cpu(), "temperature": classification.DEFAULT_TEMPERATURE}
        if self.pixel_weights is not None:  # what the decoder's rebalancing correction undoes
            state["log_rebalance"] = classification.log_rebalance_weights(self.centres.cpu(), self.pixel_weights.cpu())
        return state


TASKS = {"regression": RegressionTask, "classification": ClassificationTask}


class GanTask(_SingleNetworkTask):
    """pix2pix: U-Net generator (optionally with a noise channel) against a 70x70 PatchGAN critic on Lab.

    The first ``gan_pretrain_steps`` steps train the generator alone on the reconstruction term (L1 or
    L2 by ``loss``), so that the critic starts against plausible colours rather than noise. Then each
    step updates the critic once and the generator once (adversarial + ``gan_recon_weight`` x
    reconstruction). ``self.model`` is the generator: it is what gets exported and shipped.
    """

    family = "gan"

    def __init__(self, cfg: TrainConfig, given: torch.Tensor | ColourGiven):
        arch = network_config(cfg, in_channels=2 if cfg.gan_noise else 1)
        super().__init__(cfg, arch, given)
        self.critic = gan.PatchCritic()
        # Adam betas (0.5, 0.999) as in pix2pix/DCGAN; WGAN-GP's paper uses (0, 0.9).
        betas = (0.0, 0.9) if cfg.gan_loss == "wgan-gp" else (0.5, 0.999)
        self.opt_d = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, betas=betas)
        self.critic_net: torch.nn.Module = self.critic
        self.steps = 0

    def place(self, info: distributed.DistInfo) -> None:
        super().place(info)
        self.critic.to(self.device, memory_format=self.memory_format)
        self.critic_net = distributed.wrap(self.critic, info)

    def _generator_input(self, l_norm: torch.Tensor) -> torch.Tensor:
        if not self.cfg.gan_noise:
            return l_norm
        return torch.cat((l_norm, torch.randn_like(l_norm)), dim=1)

    def _recon(self, pred: torch.Tensor, target: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:
        """Mean L1 or L2 per channel, class-rebalanced per pixel when ``rebalance_lambda`` > 0 (rare,
        saturated colours weigh more, so the L1 term's pull toward dull medians is weaker)."""
        per_pixel = (pred - target).square() if self.cfg.loss == "l2" else (pred - target).abs()
        return self._weighted_mean(per_pixel.mean(1), ab_true)

    def _adversarial(self, scores: torch.Tensor, real: bool) -> torch.Tensor:
        if self.cfg.gan_loss == "bce":
            target = torch.ones_like(scores) if real else torch.zeros_like(scores)
            return F.binary_cross_entropy_with_logits(scores, target)
        if self.cfg.gan_loss == "lsgan":
            return (scores - (1.0 if real else 0.0)).square().mean()
        return -scores.mean() if real else scores.mean()  # WGAN: critic maximises real - fake

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.critic_net(mix).sum(), mix, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).square().mean()

    def step(self, rgb: torch.Tensor) -> dict[str, float]:
        self.net.train()
        self.critic_net.train()
        l_norm, chroma = color.split_chroma(rgb.to(self.device, non_blocking=True), self.cfg.color_space)
        l_norm = self.degraded_input(l_norm)  # the critic judges colour on the gray the generator saw
        ab_norm = color.normalize_ab(chroma)
        with self.autocast():
            fake_ab = self.net(self._layout(self._generator_input(l_norm))).float()
        self.steps += 1
        scalars: dict[str, float] = {}
        if self.steps > self.cfg.gan_pretrain_steps:
            real, fake = torch.cat((l_norm, ab_norm), 1), torch.cat((l_norm, fake_ab.detach()), 1)
            with self.autocast():
                scores_real, scores_fake = self.critic_net(self._layout(real)), self.critic_net(self._layout(fake))
            d_loss = self._adversarial(scores_real.float(), True) + self._adversarial(scores_fake.float(), False)
            if self.cfg.gan_loss == "wgan-gp":
                d_loss = d_loss + 10.0 * self._gradient_penalty(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            scalars["critic_loss"] = float(d_loss.detach())
            with self.autocast():
                scores = self.critic_net(self._layout(torch.cat((l_norm, fake_ab), 1)))
            g_adv = self._adversarial(scores.float(), True)
        else:
            g_adv = torch.zeros((), device=self.device)
        recon = self._recon(fake_ab, ab_norm, chroma)
        loss = g_adv + self.cfg.gan_recon_weight * recon
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        scalars.update(loss=float(loss.detach()), recon=float(recon.detach()), g_adv=float(g_adv.detach()))
        scalars["lr"] = self.sched.get_last_lr()[0]
        return scalars

    def loss(self, l_norm: torch.Tensor, ab_true: torch.Tensor) -> torch.Tensor:  # pragma: no cover - step() overrides
        raise NotImplementedError

    def _input(self, l: torch.Tensor) -> torch.Tensor:
        l_norm = super()._input(l)
        return gan.with_noise(l_norm, seed=0) if self.cfg.gan_noise else l_norm

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        return color.denormalize_ab(raw)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "critic": self.critic.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.critic.load_state_dict(state["critic"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.steps = int(state["steps"])


TASKS["gan"] = GanTask


@torch.inference_mode()
def accuracy(model: resnet.ResNet, rgb_u8: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy in percent of a classifier on ``rgb_u8 (N, S, S, 3)`` against class indices."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(rgb_u8), batch):
        x = torch.from_numpy(rgb_u8[i : i + batch]).permute(0, 3, 1, 2).float().to(device) / 255
        correct += int((model(x).argmax(1).cpu().numpy() == labels[i : i + batch]).sum())
    return 100.0 * correct / max(1, len(rgb_u8))


@dataclass
class LabelledValidation:
    rgb_u8: np.ndarray
    labels: np.ndarray


class ClassifierTask(_Resumable):
    """The ResNet-18 image classifier (the realism probe's judge, and a U-Net encoder's start), from
    scratch on labelled colour photos: cross-entropy with label smoothing 0.1, SGD with Nesterov
    momentum, linear warm-up (``warmup_steps``, at most a tenth of the run) then cosine to zero,
    float32. The labels are the images' parent folders (``training.data.class_of``)."""

    family = "classifier"
    best_file = "classifier.pt"
    batch_with_index = True  # the labels are looked up by the images' indices

    @classmethod
    def load_data(cls, cfg: TrainConfig, cache_dir: Path) -> TaskData:
        sets = labelled_sets(cfg.sources, cfg.source_sizes, cfg.source_repeats, cfg.val_fraction, cache_dir)
        return TaskData(sets.train, LabelledValidation(sets.val_rgb_u8, sets.val_labels), sets)

    def __init__(self, cfg: TrainConfig, sets):
        self.cfg, self.classes = cfg, sets.classes
        self.train_labels = torch.from_numpy(sets.train_labels)
        self.model = resnet.ResNet(
            resnet.ResNetConfig(
                num_classes=len(self.classes),
                widths=cfg.widths,
                stem_stride=cfg.stem_stride,
                stem_pool=cfg.stem_pool,
                image_size=cfg.crop_size,
            )
        )
        self.opt = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
        warmup, total = min(cfg.warmup_steps, cfg.max_steps // 10), cfg.max_steps

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_at)
        self.device = torch.device("cpu")
        self.net: torch.nn.Module = self.model
        self.precision = "float32 (the classifier trains in float32)"

    def place(self, info: distributed.DistInfo) -> None:
        self.device = info.device
        self.model.to(self.device)
        self.net = distributed.wrap(self.model, info)

    def warm_start(self, path: str) -> list[str]:  # pragma: no cover - the recipe check refuses init_from
        raise ValueError("the classifier trains from scratch: init_from is not supported")

    def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """One SGD step on ``(sRGB crops (B, 3, S, S) in [0, 1], their indices into the training images)``."""
        x, idx = batch
        self.net.train()
        logits = self.net(x.to(self.device, non_blocking=True))
        loss = F.cross_entropy(logits, self.train_labels[idx].to(self.device), label_smoothing=0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {"loss": float(loss.detach()), "lr": self.sched.get_last_lr()[0]}

    def validate(self, val: LabelledValidation) -> dict[str, float]:
        acc = accuracy(self.model, val.rgb_u8, val.labels)
        return {"val_acc": acc, "score": acc}

    def write_figures(self, val: LabelledValidation, out_dir: Path, step: int) -> None:
        """Nothing: the log's accuracy says it all."""

    def export(self, metrics: dict, step: int, path: Path) -> None:
        """The classifier file ``colorize eval --classifier`` and ``encoder_from`` load."""
        resnet.save(
            resnet.ClassifierFile(
                self.model.config,
                self.classes,
                self.model.state_dict(),
                self.cfg.to_dict(),
                {"val_acc": metrics["val_acc"], "step": step},
            ),
            path,
        )


TASKS["classifier"] = ClassifierTask
