"""What the project's weight files share: a ``torch.save`` dict tagged with its format, written
atomically and read with ``weights_only=True`` (a file can hold tensors and plain values only, so
reading one never runs code). ``engines.models.checkpoint`` (engines) and ``engines.models.resnet``
(classifiers) each define their keys on top of this.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engines.files import atomic_path


def stored_state_dict(state_dict: dict[str, torch.Tensor], half: bool) -> dict[str, torch.Tensor]:
    """Weights as saved: on the CPU, contiguous, float ones as fp16 when ``half`` (half the file)."""
    return {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state_dict.items()
    }


def float_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored weights back to float32 for ``load_state_dict`` (fp16 files included)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def write(payload: dict, path: Path) -> None:
    """Write ``payload`` atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read(path: Path, fmt: str, what: str) -> dict:
    """The dict saved at ``path``, checked to be a ``fmt`` file; ValueError naming ``what`` otherwise."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same to a caller
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__})") from e
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path}: not a {fmt} file")
    return payload
