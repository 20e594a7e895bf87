"""The cached export that the photo path without PyTorch runs (``engines.ort_pipeline``), found by the
engine file's SHA-256: an ONNX graph of the network with its family's decoding after it (written by
``engines.runtime.export.write_decoded_bundle``) and a JSON sidecar with what the pipeline around it
needs. Reading it imports no PyTorch. The sidecar is written last, so its presence means the pair is
complete; anything unreadable or of another version reads as absent (PyTorch's path then runs and
writes it again).
"""

from __future__ import annotations

import json
from pathlib import Path

from engines.files import cache_dir

VERSION = 1
# What the sidecar must hold, and the types the pipeline relies on.
FIELDS = {
    "version": int,
    "family": str,
    "working_size": int,
    "color_space": str,
    "multiple": int,
    "in_channels": int,
    "temperature": (int, float),
    "correction": (int, float),
    "corrected": bool,  # the engine records rebalancing weights (a correction can apply)
}


def paths(weights_sha256: str) -> tuple[Path, Path]:
    """(ONNX graph, JSON sidecar) for the engine file with this SHA-256."""
    base = cache_dir() / "onnx" / f"{weights_sha256[:32]}-decoded"
    return base.with_suffix(".onnx"), base.with_suffix(".json")


def read(weights_sha256: str) -> dict | None:
    """The sidecar (with ``"onnx"``, the graph's path, added), or None when the bundle is absent or
    unusable."""
    graph, sidecar = paths(weights_sha256)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != VERSION or not graph.is_file():
        return None
    if any(not isinstance(meta.get(k), t) for k, t in FIELDS.items()):
        return None
    return {**meta, "onnx": graph}
