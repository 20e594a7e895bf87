"""Pack a recipe's training images into one small gzipped tar of JPEGs, to travel to a lent GPU machine.

    python -m training.pack training/recipes/campaign-classification.toml --out .gpu-pack/train.tar.gz

The device machine gets the working tree and at most 64 MiB in all, and none of ``../shared/data``. The
tracked tree (mostly weights) takes a share that grows as engines are committed (about 52 MiB in session
19, when a fixed 14 MiB pack would no longer have fitted), so the budget defaults to what the tracked tree
leaves (``room_left``). The pack holds as many of the recipe's *training* images
(never its validation images) as fit the budget, drawn evenly from every source in proportion to its
size (and its ``source_repeats``), at the recipe's source sizes, as JPEG of quality ``--quality``.
Quality 75 with 4:2:0 chroma was measured on 500 Tiny ImageNet images: 1.7 KB each, mean |dab| 0.5
(OpenCV's 8-bit Lab) against 1.9 KB and 1.1 for 4:4:4 at the same quality (those images' chroma was
subsampled already) and 2.3 KB and 1.0 for 4:4:4 at 85. ``training`` reads the tar like any shard. The folder is git-ignored: training data never enters the repository.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np

from engines.files import atomic_path
from training.config import load_recipe
from training.data import DataError, load_source, validation_mask

DEVICE_MIB = 64.0  # what travels to the device machine: the working tree and the carried paths together
MARGIN_MIB = 2.0  # for untracked files and the run's own small outputs


def room_left(repo: Path, total_mib: float = DEVICE_MIB, margin_mib: float = MARGIN_MIB) -> float:
    """MiB left for the pack once ``repo``'s tracked files travel; ValueError outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise ValueError(f"{repo} is not a git checkout: give --max-mb") from None
    files = [repo / os.fsdecode(name) for name in out.split(b"\0") if name]
    tracked = sum(f.stat().st_size for f in files if f.is_file())  # a deleted, uncommitted file does not travel
    room = total_mib - tracked / 2**20 - margin_mib
    if room <= 0:
        raise ValueError(f"the tracked files take {tracked / 2**20:.1f} MiB: no room for a pack in {total_mib:g} MiB")
    return room


def _jpeg(rgb_u8: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg",
        np.ascontiguousarray(rgb_u8[:, :, ::-1]),
        [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1],
    )
    if not ok:
        raise DataError("JPEG encoding failed")
    return buf.tobytes()


def pack(recipe: Path, out: Path, max_mb: float, quality: int = 75, seed: int = 0) -> dict:
    """Write the pack; returns ``{"images": n, "bytes": size, "per_source": [...]}``."""
    cfg = load_recipe(recipe)
    cache = Path(os.path.expanduser(cfg.cache_dir))
    rng = np.random.default_rng(seed)
    sources = []
    for i, (src, size) in enumerate(zip(cfg.sources, cfg.source_sizes)):
        images = load_source(Path(src), size, cache)
        train = np.flatnonzero(~validation_mask(images.names, cfg.val_fraction))
        weight = len(train) * (cfg.source_repeats[i] if cfg.source_repeats else 1)
        sources.append((Path(src).name, images, rng.permutation(train), weight))
    budget = max_mb * 2**20
    # gzip shrinks what the JPEGs repeat (their headers) and the tar's headers and padding by an amount
    # known only once written: aim at the budget, then correct the aim by the size reached.
    target, members = budget, []
    with atomic_path(out) as tmp:
        for _ in range(4):
            members = _choose(sources, target, quality)
            _write(members, tmp)
            size = tmp.stat().st_size
            if size > budget or size < 0.95 * budget and len(members) < sum(len(s[2]) for s in sources):
                target *= 0.98 * budget / size
            else:
                break
        if size > budget:
            members = _choose(sources, target, quality)
            _write(members, tmp)
    per_source = [sum(name.startswith(f"{s[0]}/") for name, _ in members) for s in sources]
    return {"images": len(members), "bytes": out.stat().st_size, "per_source": per_source}


def _choose(sources: list, target: float, quality: int) -> list[tuple[str, bytes]]:
    """Round-robin in proportion to each source's weight, until the JPEG bytes reach ``target``."""
    total_weight = sum(w for *_, w in sources)
    members: list[tuple[str, bytes]] = []
    taken, credit, total = [0] * len(sources), [0.0] * len(sources), 0
    while any(taken[i] < len(s[2]) for i, s in enumerate(sources)):
        for i, (label, images, order, weight) in enumerate(sources):
            credit[i] += weight / total_weight
            while credit[i] >= 1 and taken[i] < len(order):
                credit[i] -= 1
                k = order[taken[i]]
                data = _jpeg(images.rgb_u8[k], quality)
                if total + len(data) > target:
                    return members
                members.append((f"{label}/{images.names[k]}.jpg", data))
                total += len(data)
                taken[i] += 1
    return members


def _write(members: list[tuple[str, bytes]], path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__)
    p.add_argument("recipe", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the .tar.gz to write (e.g. .gpu-pack/train.tar.gz)")
    p.add_argument(
        "--max-mb",
        type=float,
        default=None,
        help=f"size budget in MiB (default: the {DEVICE_MIB:g} MiB that travel, less the tracked files and {MARGIN_MIB:g})",
    )
    p.add_argument("--quality", type=int, default=75, help="JPEG quality")
    args = p.parse_args(argv)
    try:
        budget = args.max_mb if args.max_mb is not None else room_left(Path(__file__).resolve().parents[1])
        r = pack(args.recipe, args.out, budget, args.quality)
    except (OSError, ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {r['images']} training images, {r['bytes'] / 2**20:.1f} MiB (per source: {r['per_source']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
