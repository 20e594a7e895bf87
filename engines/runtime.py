"""Backend selection: which device runs the engine, and why.

``cpu`` and ``cuda`` are plain PyTorch. ``tensorrt`` is not part of this build yet (see the README's
status table); asking for it is a clear error rather than a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")


class BackendUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Backend:
    name: str
    device: torch.device
    notes: tuple[str, ...]  # why this one was picked and why others were skipped


def _cuda_problem() -> str | None:
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return f"no CUDA GPU visible to PyTorch {torch.__version__} ({build})"
    return None


_TENSORRT_PROBLEM = "the TensorRT backend is not part of this build yet"


def select_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "cpu":
        return Backend("cpu", torch.device("cpu"), ("cpu: requested",))
    if name == "tensorrt":
        raise BackendUnavailable(f"tensorrt backend unavailable: {_TENSORRT_PROBLEM}")
    problem = _cuda_problem()
    if name == "cuda":
        if problem:
            raise BackendUnavailable(f"cuda backend unavailable: {problem}")
        return Backend("cuda", torch.device("cuda"), ("cuda: requested",))
    notes = [f"tensorrt skipped: {_TENSORRT_PROBLEM}"]
    if problem is None:
        return Backend("cuda", torch.device("cuda"), (*notes, f"cuda picked: {torch.cuda.get_device_name()}"))
    notes.append(f"cuda skipped: {problem}")
    return Backend("cpu", torch.device("cpu"), (*notes, "cpu picked"))
