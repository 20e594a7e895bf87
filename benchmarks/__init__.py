"""Speed and quality benchmarks; each module runs with ``python -m benchmarks.NAME``."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def current_commit(root: Path = ROOT) -> str:
    """The short commit hash of the checkout at ``root`` for result headers, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
