"""The training loop: read it top to bottom. Data -> task.step() -> periodic validation and
checkpoints. Resuming restores the task, the sampler's position and generator, and the step."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np
import torch

from engines import color
from engines.files import atomic_path
from engines.media.crop import centre_square
from engines.metrics import AbErrorCurve, ab_histogram, colourfulness, rebalance_weights
from engines.models import checkpoint
from training import distributed, figures
from training.config import TrainConfig
from training.data import BatchSampler, DataError, training_sets
from training.tasks import TASKS

Progress = Callable[[int, dict[str, float]], None]


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


def validate(task, val_rgb: torch.Tensor, metric_weights: torch.Tensor) -> dict[str, float]:
    """Held-out figures for the model and, alongside, for an all-gray prediction."""
    curve, gray = AbErrorCurve(metric_weights), AbErrorCurve(metric_weights)
    colorful_pred, colorful_true = [], []
    for i in range(0, len(val_rgb), 256):
        rgb = val_rgb[i : i + 256]
        lab = color.rgb_to_lab(rgb)
        ab = task.predict_ab(lab[:, :1])
        curve.update(ab, lab[:, 1:])
        gray.update(torch.zeros_like(ab), lab[:, 1:])
        colorful_pred.append(colourfulness(color.lab_to_rgb_keep_lightness(lab[:, :1], ab)))
        colorful_true.append(colourfulness(rgb))
    return {
        "auc": curve.auc(),
        "auc_rebal": curve.auc_rebalanced(),
        "gray_auc": gray.auc(),
        "gray_auc_rebal": gray.auc_rebalanced(),
        "colourfulness": float(torch.cat(colorful_pred).mean()),
        "colourfulness_true": float(torch.cat(colorful_true).mean()),
    }


class Interrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM at a step boundary, with its state saved there."""

    def __init__(self, step: int, state_path: Path):
        super().__init__(f"interrupted at step {step}; state saved to {state_path}")
        self.step, self.state_path = step, state_path


class _StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM (a scheduler's pre-emption) ask the loop to stop after the step
    under way, so that the saved state resumes exactly; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _save_state(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def export_engine(task, cfg: TrainConfig, metrics: dict, step: int, path: Path) -> None:
    checkpoint.save(
        checkpoint.EngineCheckpoint(
            family=task.family,
            arch=task.model.config,
            color_space=cfg.color_space,
            state_dict=task.model.state_dict(),
            working_size=cfg.working_size,
            trained_on={
                "recipe": cfg.to_dict(),
                "step": step,
                "images_seen": step * cfg.batch_size,
                "precision": task.precision,
            },
            metrics=metrics,
            family_state=task.family_state(),
        ),
        path,
        half=True,
    )


def train(
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool = True,
    progress: Progress | None = None,
    stop_at_step: int | None = None,
) -> dict:
    """Train until ``cfg.max_steps`` (or early stopping, or ``cfg.max_minutes`` of this call). Returns the
    best validation figures.

    ``out_dir`` receives ``state.pt`` (full resumable state), ``engine.pt`` (best exported engine),
    ``log.jsonl`` (one line per validation), ``curves.png`` and ``samples/`` (see ``training.figures``),
    and with ``cfg.keep_snapshots`` every validation's weights under ``snapshots/``.
    ``stop_at_step`` pauses early (state saved), as an interruption would; running again with
    ``resume`` continues exactly where it stopped. Ctrl-C or SIGTERM stops at the next step boundary,
    saves the state and raises ``Interrupted``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    info = distributed.init()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(os.path.expanduser(cfg.cache_dir))

    state_path = out_dir / "state.pt"
    resuming = resume and state_path.exists()
    if cfg.init_from and not resuming:  # a missing or broken start file should not wait for the data
        checkpoint.load(Path(cfg.init_from))
    train_sets, val_sets = training_sets(cfg.sources, cfg.source_sizes, cfg.source_repeats, cfg.val_fraction, cache)
    if not train_sets or sum(len(t) for t in train_sets) == 0:
        raise DataError("no colour training images found in the configured sources")
    if sum(len(v) for v in val_sets) == 0:
        raise DataError("no images left for validation: give more images or films, or raise val_fraction")
    # Metrics are always in CIELAB; the engine's own prior is in the space it predicts.
    prior = chroma_prior(train_sets)
    metric_weights = rebalance_weights(prior, lam=0.0)
    if cfg.color_space != "lab":
        prior = chroma_prior(train_sets, cfg.color_space)
    # Validation images: centre crops at the training crop size, a fixed subset.
    val_u8 = np.concatenate([_centre(v, cfg.crop_size) for v in val_sets])
    val_u8 = val_u8[np.random.default_rng(1).permutation(len(val_u8))[: cfg.val_images]]
    val_rgb = torch.from_numpy(val_u8).permute(0, 3, 1, 2).float() / 255

    task = TASKS[cfg.family](cfg, prior)
    if cfg.init_from and not resuming:  # a resumed run takes every weight from its state
        task.warm_start(cfg.init_from)
    task.place(info)
    if info.is_main:
        print(f"precision: {task.precision}", flush=True)
    sampler = BatchSampler(train_sets, cfg.batch_size, cfg.crop_size, cfg.seed, cfg.min_crop_scale)
    step, best, stale = 0, {"score": -1.0}, 0
    if resuming:
        state = torch.load(state_path, weights_only=True)
        task.load_state_dict(state["task"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        step, best, stale = state["step"], state["best"], state["stale"]

    def save_state() -> None:
        if not info.is_main:
            return
        _save_state(
            state_path,
            {
                "task": task.state_dict(),
                "sampler": sampler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "best": best,
                "stale": stale,
                "config": cfg.to_dict(),
            },
        )

    samples = val_rgb[:8]  # the same images in every sample grid
    if step == 0 and info.is_main:
        figures.write_samples(task, samples, out_dir, 0)  # "before": untrained or warm-started
    last_save = time.monotonic()
    t0, seen0 = time.monotonic(), step
    end = min(cfg.max_steps, stop_at_step or cfg.max_steps)
    with _StopRequests() as stop:
        while step < end:
            if distributed.any_process(stop.requested, info):
                save_state()
                raise Interrupted(step, state_path)
            scalars = task.step(sampler.next_batch(info.rank, info.world))
            step += 1
            if progress and info.is_main:
                scalars["img_per_s"] = (step - seen0) * cfg.batch_size / max(1e-9, time.monotonic() - t0)
                progress(step, scalars)
            # A time budget (a lent GPU's few minutes): every process stops at the same step, validated.
            out_of_time = bool(cfg.max_minutes) and distributed.any_process(
                time.monotonic() - t0 > cfg.max_minutes * 60, info
            )
            if step % cfg.val_every == 0 or step == cfg.max_steps or out_of_time:
                # Every process validates (the models are identical), so all take the same decisions.
                held_out = validate(task, val_rgb, metric_weights)
                held_out["score"] = (held_out["auc"] + held_out["auc_rebal"]) / 2
                if info.is_main:
                    with open(out_dir / "log.jsonl", "a") as f:
                        line = {
                            "step": step,
                            "epoch": sampler.epoch,
                            "precision": task.precision,
                            **scalars,
                            **held_out,
                        }
                        f.write(json.dumps(line) + "\n")
                    figures.write_samples(task, samples, out_dir, step)
                    figures.write_curves(out_dir / "log.jsonl", out_dir / "curves.png")
                if cfg.keep_snapshots and info.is_main:
                    (out_dir / "snapshots").mkdir(exist_ok=True)
                    export_engine(task, cfg, held_out, step, out_dir / "snapshots" / f"step-{step:07d}.pt")
                if held_out["score"] > best["score"]:
                    best, stale = {**held_out, "step": step}, 0
                    if info.is_main:
                        export_engine(task, cfg, best, step, out_dir / "engine.pt")
                else:
                    stale += 1
                save_state()
                last_save = time.monotonic()
                if out_of_time or (cfg.patience and stale >= cfg.patience):
                    break
            elif time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                save_state()
                last_save = time.monotonic()
    save_state()
    return best


def _centre(arr: np.ndarray, size: int) -> np.ndarray:
    """Whole (square) images resized to the crop size, so validation sees the same framing for every source."""
    if arr.shape[1] == size:
        return arr
    return np.stack([centre_square(a, size) for a in arr])
