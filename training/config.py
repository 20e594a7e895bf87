"""Training configuration: a frozen dataclass, loaded from a TOML recipe that may not hold unknown keys."""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    family: str = "regression"
    # Data: tar shards, folders (images and films) or films; each is decoded at ``source_size`` (square centre crop).
    sources: tuple[str, ...] = ()
    source_sizes: tuple[int, ...] = ()
    # How many times each source's training images count per epoch and in the colour prior (empty: once
    # each): weights a small source up, e.g. a hundred photos like the ones to be coloured beside
    # 100,000 small web images. Validation images are never repeated.
    source_repeats: tuple[int, ...] = ()
    val_fraction: float = 0.02
    crop_size: int = 64  # training crops are this size (and validation's)
    # Multi-scale training: each batch's crop size drawn from these (empty: always crop_size). A photo
    # coloured whole at the working size shows its objects smaller than a 64-pixel Tiny ImageNet image
    # does; smaller crops of the same images train that scale (docs/experiments.md, session 15).
    crop_sizes: tuple[int, ...] = ()
    min_crop_scale: float = 0.45  # area scale jitter of crops
    # The share of training images whose gray input is degraded (a tone curve, blur, grain; the target
    # colour stays the clean image's): old prints, scans and film (training.degrade). 0: off.
    degrade_input: float = 0.0
    # "lab" (default) or "yuv": the space the engine predicts chroma in (see engines.color.COLOR_SPACES).
    color_space: str = "lab"
    # Model
    widths: tuple[int, ...] = (32, 64, 128, 256)
    norm: str = "batch"  # "batch" or "group" (see engines.models.unet.UNetConfig)
    # "plain" or "resnet18" (see engines.models.unet.UNetConfig); ``encoder_from``: a classifier file
    # (``python -m training.classifier``) whose stem and stages initialise the ResNet encoder, trained
    # at ``encoder_lr_scale`` times the learning rate so that its features are adapted, not erased.
    encoder: str = "plain"
    encoder_from: str = ""
    encoder_lr_scale: float = 1.0
    # Warm start: an engine checkpoint (e.g. the shipped regression engine) whose weights initialise
    # every layer with the same name and shape; other layers (a classification head) start fresh.
    init_from: str = ""
    # Regression loss: "l1", "l2" or "huber" on normalised ab; ``huber_delta`` in normalised units.
    loss: str = "huber"
    huber_delta: float = 0.1
    # Class rebalancing of the per-pixel loss (Zhang et al.): 0 disables it; otherwise each ab bin weighs
    # 1 / ((1 - lambda) p + lambda / Q), so the SMALLER a lambda above 0, the stronger the rebalancing
    # (0.5: Zhang et al.'s; 1: uniform, i.e. none).
    rebalance_lambda: float = 0.0
    # The semantic loss (Iizuka et al. 2016; regression and classification): the weight of an auxiliary
    # cross-entropy on each image's class (its folder) predicted from the U-Net's global features; 0: off.
    # Training only: the engine is the same network. Every source must be laid out by class.
    class_loss_weight: float = 0.0
    # GAN (family = "gan"): adversarial loss, weight of the L1/L2 term (``loss`` picks which; on normalised
    # ab, as pix2pix's lambda 100 on [-1, 1] images), generator-only pre-training steps, noise input.
    gan_loss: str = "lsgan"  # "bce", "lsgan" or "wgan-gp"
    gan_recon_weight: float = 100.0
    gan_pretrain_steps: int = 1000
    gan_noise: bool = True
    critic_lr: float = 2e-4
    # The ResNet image classifier (family = "classifier", ``python -m training.classifier``): its stem
    # (see engines.models.resnet.ResNetConfig); the classes are the images' parent folders.
    stem_stride: int = 1
    stem_pool: bool = False
    # Optimisation
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 300
    # Validate, keep and ship an exponential moving average of the weights (0: off; 0.999 averages
    # about the last 1,000 steps): less noisy than one step's weights at a steady learning rate.
    ema_decay: float = 0.0
    max_steps: int = 20_000
    # The run's length in passes over the training images instead (0: ``max_steps`` is the length):
    # max_steps becomes epochs x batches per epoch once the data is loaded.
    epochs: float = 0.0
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    # "auto": bfloat16 autocast (with channels-last) on a GPU and on CPUs with bf16 in hardware
    # (AVX-512 BF16, AMX), float32 elsewhere; or "float32" / "bfloat16" to force one.
    precision: str = "auto"
    # Classification: compile the loss (log-softmax over the Q bins and the soft target's gather, forward
    # and backward) with torch.compile into one fused pass instead of a dozen over the (N, Q, h, w)
    # logits: 204 -> 71 ms a batch of 32 on one core. Costs about 30 s of compiling when a run starts
    # (cached after) and needs a C++ compiler; the same loss to float rounding (tests/test_training.py).
    compile_loss: bool = False
    # Bookkeeping
    val_every: int = 500
    val_images: int = 1024
    checkpoint_minutes: float = 3.0
    # Keep the weights of every validation as ``snapshots/step-NNNNNNN.pt`` (fp16 engines, about 3 MB
    # each for the shipped size): the points of a learning curve (``benchmarks.learning_curve``).
    keep_snapshots: bool = False
    patience: int = 0  # early stopping: validations without improvement before stopping; 0 disables
    # A time budget for one call (minutes; 0: none): training stops, validated and saved, once it is spent.
    max_minutes: float = 0.0
    working_size: int = 128  # recorded in the exported engine
    cache_dir: str = "~/.cache/colorize/data"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _check_type(key: str, value: Any, expected: Any) -> None:
    """A recipe value must have its field's type (an int may stand for a float; tuples element-wise)."""
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}

    def fits(v: Any, kind: type) -> bool:
        if kind is bool or isinstance(v, bool):
            return kind is bool and isinstance(v, bool)
        return isinstance(v, (int, float) if kind is float else kind)

    if typing.get_origin(expected) is tuple:
        item = typing.get_args(expected)[0]
        ok = isinstance(value, tuple) and all(fits(v, item) for v in value)
        wanted = f"a list of {names[item].removeprefix('a ').removeprefix('an ')}s"
    else:
        ok, wanted = fits(value, expected), names[expected]
    if not ok:
        raise ValueError(f"recipe key {key} must be {wanted}, not {value!r}")


def from_dict(d: dict[str, Any]) -> TrainConfig:
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown recipe keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    hints = typing.get_type_hints(TrainConfig)
    for key, value in values.items():
        _check_type(key, value, hints[key])
    cfg = replace(TrainConfig(), **values)
    if len(cfg.sources) != len(cfg.source_sizes):
        raise ValueError("sources and source_sizes must have the same length")
    if cfg.source_repeats and (len(cfg.source_repeats) != len(cfg.sources) or min(cfg.source_repeats) < 1):
        raise ValueError("source_repeats must give a whole number of at least 1 for each source")
    if any(size < 8 or size % 8 for size in cfg.crop_sizes):
        raise ValueError(f"crop_sizes must be multiples of 8 (the networks' stride), got {list(cfg.crop_sizes)}")
    if cfg.family not in ("regression", "classification", "gan", "classifier"):
        raise ValueError(f"family must be regression, classification, gan or classifier, not {cfg.family!r}")
    if cfg.family == "classifier" and cfg.init_from:
        raise ValueError("the classifier trains from scratch: init_from is for the colour families")
    if cfg.epochs < 0:
        raise ValueError(f"epochs must be 0 (use max_steps) or more, not {cfg.epochs!r}")
    if cfg.gan_loss not in ("bce", "lsgan", "wgan-gp"):
        raise ValueError(f"gan_loss must be bce, lsgan or wgan-gp, not {cfg.gan_loss!r}")
    if cfg.color_space not in ("lab", "yuv"):
        raise ValueError(f"color_space must be lab or yuv, not {cfg.color_space!r}")
    if cfg.encoder not in ("plain", "resnet18"):
        raise ValueError(f"encoder must be plain or resnet18, not {cfg.encoder!r}")
    if cfg.encoder_from and cfg.encoder != "resnet18":
        raise ValueError('encoder_from needs encoder = "resnet18"')
    if cfg.norm not in ("batch", "group"):
        raise ValueError(f"norm must be batch or group, not {cfg.norm!r}")
    if cfg.batch_size % int(os.environ.get("WORLD_SIZE", "1")):
        raise ValueError(
            f"batch_size {cfg.batch_size} must divide evenly among the {os.environ['WORLD_SIZE']} processes"
        )
    if cfg.precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, not {cfg.precision!r}")
    if not 0 <= cfg.ema_decay < 1:
        raise ValueError(f"ema_decay must be 0 (off) or in (0, 1), not {cfg.ema_decay!r}")
    if cfg.class_loss_weight < 0:
        raise ValueError(f"class_loss_weight must be 0 (off) or more, not {cfg.class_loss_weight!r}")
    if cfg.class_loss_weight and cfg.family not in ("regression", "classification"):
        raise ValueError("class_loss_weight is for the regression and classification families")
    if not 0 <= cfg.rebalance_lambda <= 1:
        # Above 1 the mix turns negative on common bins: a loss that rewards error there.
        raise ValueError(f"rebalance_lambda must be 0 (off) or in (0, 1], not {cfg.rebalance_lambda!r}")
    if not 0 <= cfg.degrade_input <= 1:
        raise ValueError(f"degrade_input must be a share from 0 to 1, not {cfg.degrade_input!r}")
    if cfg.degrade_input and cfg.family == "classifier":
        raise ValueError("degrade_input is for the colour families")
    if cfg.loss not in ("l1", "l2", "huber"):
        raise ValueError(f"loss must be l1, l2 or huber, not {cfg.loss!r}")
    return cfg


def load_recipe(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    with open(path, "rb") as f:
        d = tomllib.load(f)
    d.update(overrides or {})
    return from_dict(d)
