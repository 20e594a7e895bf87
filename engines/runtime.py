"""Backend selection: which device runs the engine, and why.

``cpu`` and ``cuda`` are plain PyTorch; ``tensorrt`` runs a TensorRT engine built from the ONNX
export (``engines.trt_backend``, unverified: TensorRT cannot be installed on our machines).
``auto`` tries TensorRT, then CUDA, then CPU, and records why it skipped each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines import trt_backend

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


def select_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "cpu":
        return Backend("cpu", torch.device("cpu"), ("cpu: requested",))
    trt_problem = trt_backend.unavailable_reason()
    if name == "tensorrt":
        if trt_problem:
            raise BackendUnavailable(f"tensorrt backend unavailable: {trt_problem}")
        return Backend("tensorrt", torch.device("cuda"), ("tensorrt: requested (unverified backend)",))
    if trt_problem is None:
        return Backend("tensorrt", torch.device("cuda"), ("tensorrt picked (unverified backend)",))
    problem = _cuda_problem()
    if name == "cuda":
        if problem:
            raise BackendUnavailable(f"cuda backend unavailable: {problem}")
        return Backend("cuda", torch.device("cuda"), ("cuda: requested",))
    notes = [f"tensorrt skipped: {trt_problem}"]
    if problem is None:
        return Backend("cuda", torch.device("cuda"), (*notes, f"cuda picked: {torch.cuda.get_device_name()}"))
    notes.append(f"cuda skipped: {problem}")
    return Backend("cpu", torch.device("cpu"), (*notes, "cpu picked"))
