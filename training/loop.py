"""The training loop: read it top to bottom. Data -> task.step() -> periodic validation and
checkpoints. Resuming restores the task, the sampler's position and generator, and the step."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Self

import torch

from engines.files import atomic_path
from engines.models import checkpoint
from engines.models.checkpoint import CheckpointError
from training import distributed
from training.config import TrainConfig
from training.data import BatchSampler, DataError
from training.tasks import TASKS

Progress = Callable[[int, dict[str, float]], None]


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


def train(
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool = True,
    progress: Progress | None = None,
    stop_at_step: int | None = None,
) -> dict:
    """Train until ``cfg.max_steps`` (or early stopping, or ``cfg.max_minutes`` of this call). Returns the
    best validation figures.

    ``out_dir`` receives ``state.pt`` (full resumable state), the task's best export (``engine.pt`` for a
    colour family, ``classifier.pt`` for the classifier), ``log.jsonl`` (one line per validation), the
    task's figures (colour: ``curves.png`` and ``samples/``, see ``training.figures``), and with
    ``cfg.keep_snapshots`` every validation's export under ``snapshots/``.
    ``stop_at_step`` pauses early (state saved), as an interruption would; running again with
    ``resume`` continues exactly where it stopped. Ctrl-C or SIGTERM stops at the next step boundary,
    saves the state and raises ``Interrupted``. ``progress`` is called after every step with its
    scalars (and, at a validation, the held-out figures).
    """
    info, state_path, resuming = _prepare(cfg, out_dir, resume)
    cfg, data, sampler, task = _build(cfg, info, warm_start=not resuming)
    step, best, stale = 0, {"score": -1.0}, 0
    if resuming:
        step, best, stale = _restore(state_path, task, sampler)

    def save_state() -> None:
        if info.is_main:
            _save_state(state_path, _state(task, sampler, cfg, step, best, stale))

    if step == 0 and info.is_main:
        task.write_figures(data.val, out_dir, 0)  # "before": untrained or warm-started
    t0 = last_save = time.monotonic()
    seen0 = step
    end = min(cfg.max_steps, stop_at_step or cfg.max_steps)
    with _StopRequests() as stop:
        while step < end:
            if distributed.any_process(stop.requested, info):
                save_state()
                raise Interrupted(step, state_path)
            scalars = task.step(sampler.next_batch(info.rank, info.world, with_index=task.batch_with_index))
            step += 1
            if progress and info.is_main:
                scalars["img_per_s"] = (step - seen0) * cfg.batch_size / max(1e-9, time.monotonic() - t0)
            # A time budget (a lent GPU's few minutes): every process stops at the same step, validated.
            out_of_time = bool(cfg.max_minutes) and distributed.any_process(
                time.monotonic() - t0 > cfg.max_minutes * 60, info
            )
            held_out: dict[str, float] = {}
            if step % cfg.val_every == 0 or step == cfg.max_steps or out_of_time:
                # Every process validates (the models are identical), so all take the same decisions.
                held_out = task.validate(data.val)
                if info.is_main:
                    _record(task, data.val, out_dir, step, sampler.epoch, scalars, held_out, cfg.keep_snapshots)
                if held_out["score"] > best["score"]:
                    best, stale = {**held_out, "step": step}, 0
                    if info.is_main:
                        task.export(best, step, out_dir / task.best_file)
                else:
                    stale += 1
                save_state()
                last_save = time.monotonic()
            elif time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                save_state()
                last_save = time.monotonic()
            if progress and info.is_main:
                progress(step, {**scalars, **held_out})
            if held_out and (out_of_time or (cfg.patience and stale >= cfg.patience)):
                break
    save_state()
    return best


def _prepare(cfg: TrainConfig, out_dir: Path, resume: bool) -> tuple[distributed.DistInfo, Path, bool]:
    """Threads, seed, the process group and ``out_dir``; ``(info, state path, resuming)``. A warm-start
    file is read now: a missing or broken one should not wait for the data."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    info = distributed.init()
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "state.pt"
    resuming = resume and state_path.exists()
    if cfg.init_from and not resuming:
        checkpoint.load(Path(cfg.init_from))
    return info, state_path, resuming


def _build(cfg: TrainConfig, info: distributed.DistInfo, warm_start: bool):
    """``(cfg, data, sampler, task)``: the family's data (``TaskData``), the sampler over its training
    images, and the task on this process's device, warm-started from ``cfg.init_from`` when asked
    (a resumed run takes every weight from its state). ``cfg`` comes back with ``max_steps`` set
    when the recipe gives ``epochs``."""
    family = TASKS[cfg.family]
    data = family.load_data(cfg, Path(os.path.expanduser(cfg.cache_dir)))
    sampler = BatchSampler(data.train, cfg.batch_size, cfg.crop_size, cfg.seed, cfg.min_crop_scale, cfg.crop_sizes)
    if cfg.epochs:  # the length in passes over the data: known now that the data is
        cfg = replace(cfg, max_steps=max(1, int(cfg.epochs * len(sampler))))
    task = family(cfg, data.given)
    if cfg.init_from and warm_start:
        task.warm_start(cfg.init_from)
    task.place(info)
    if info.is_main:
        print(f"precision: {task.precision}", flush=True)
    return cfg, data, sampler, task


def _state(task, sampler: BatchSampler, cfg: TrainConfig, step: int, best: dict, stale: int) -> dict:
    """Everything a resumed run needs to go on exactly as this one would have."""
    return {
        "task": task.state_dict(),
        "sampler": sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "step": step,
        "best": best,
        "stale": stale,
        "config": cfg.to_dict(),
    }


def _restore(state_path: Path, task, sampler: BatchSampler) -> tuple[int, dict, int]:
    """Load a saved state into the task and the sampler; returns ``(step, best, stale)``."""
    state = torch.load(state_path, weights_only=True)
    task.load_state_dict(state["task"])
    sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["best"], state["stale"]


def _record(
    task, val, out_dir: Path, step: int, epoch: int, scalars: dict, held_out: dict, keep_snapshot: bool
) -> None:
    """What a validation leaves in ``out_dir``: its line in ``log.jsonl``, the task's figures and, with
    ``keep_snapshot``, the export under ``snapshots/``."""
    with open(out_dir / "log.jsonl", "a") as f:
        line = {"step": step, "epoch": epoch, "precision": task.precision, **scalars, **held_out}
        f.write(json.dumps(line) + "\n")
    task.write_figures(val, out_dir, step)
    if keep_snapshot:
        (out_dir / "snapshots").mkdir(exist_ok=True)
        task.export(held_out, step, out_dir / "snapshots" / f"step-{step:07d}.pt")


def train_command(cfg: TrainConfig, out_dir: Path, progress: Progress, resume: bool = True) -> tuple[int, dict]:
    """``train`` as the commands run it (``python -m training``, ``python -m training.classifier``):
    ``(exit status, best figures)``. A source or start file that cannot be used is one line on stderr
    (2); an interruption says how to resume (130). Ends torchrun's process group either way."""
    main_rank = int(os.environ.get("RANK", "0")) == 0
    clean = False  # every process ended the run at the same point (see distributed.shutdown)
    try:
        best = train(cfg, out_dir, resume=resume, progress=progress)
        clean = True
    except (DataError, CheckpointError) as e:  # a source, or an init_from file, that cannot be used
        print(f"error: {e}", file=sys.stderr)
        return 2, {}
    except Interrupted as e:
        clean = True
        if main_rank:
            print(f"{e}; run the same command to resume", file=sys.stderr)
        return 130, {}
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the first step
        if main_rank:
            print(f"interrupted; {out_dir / 'state.pt'} holds the last saved state, if any", file=sys.stderr)
        return 130, {}
    finally:
        distributed.shutdown(clean)
    return 0, best
