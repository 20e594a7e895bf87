"""Many processes through ``torchrun`` (PyTorch DDP): one process per GPU, or several on CPU (gloo).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op and training
runs in one process on the first GPU, or the CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes logs, checkpoints and engines."""
        return self.rank == 0


def init(device: str = "auto") -> DistInfo:
    """Join the process group when started by ``torchrun``; pick this process's device."""
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        # nccl for GPUs; gloo runs the same code on CPU (used by the tests).
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return DistInfo(rank, world, torch.device("cuda", local))
    return DistInfo(rank, world, torch.device("cpu"))


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """The module the training step calls: DDP over ``model`` when there are several processes.

    On GPUs BatchNorm becomes SyncBatchNorm, so the statistics are those of the global batch, as in
    one process (unverified here: no GPU). SyncBatchNorm does not run on CPU: with gloo each process
    normalises over its own share, so only models without BatchNorm (``norm = "group"``) train
    exactly as one process would; the multi-process test uses such a model.
    """
    if info.world == 1:
        return model
    if info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index])
    return torch.nn.parallel.DistributedDataParallel(model)


def average_gradients(module: torch.nn.Module, info: DistInfo) -> None:
    """Average a module's gradients over the processes, as DDP does for the modules it wraps (for a
    training-only module outside the wrapped network)."""
    if info.world == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= info.world


def any_process(flag: bool, info: DistInfo) -> bool:
    """True on every process when ``flag`` is true on any (so that all stop at the same step)."""
    if info.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shutdown(clean: bool = True) -> None:
    """Leave the process group.

    CI once saw a rank that had finished abort at exit (SIGABRT inside gloo; not reproduced here in
    about 50 runs, cause not established). Two precautions against the known ways to get there:
    the collection frees the run's DDP wrapper, which holds the group and can sit in a reference
    cycle (it did on the main process), so gloo is not torn down during the interpreter's exit; and
    after a clean run (or an interruption, which every process reaches at the same step) each
    process waits for the others, so none closes its connections while the main one still saves.
    After an error a peer may be gone, so there is no wait.
    """
    if dist.is_initialized():
        gc.collect()
        if clean:
            dist.barrier()
        dist.destroy_process_group()
