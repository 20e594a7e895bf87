"""Training data: image sources (tar shards, folders, video files, lists) decoded once into a uint8 cache,
a grayscale filter, a deterministic validation split, and batched augmentation in torch.

Images are decoded with OpenCV here rather than PyAV: a training set is tens of thousands of small
files, and opening one demuxer per file costs more than the whole decode. (Photos given to the CLI go
through PyAV, see ``engines.media.photo_io``.) Films, alone or inside a folder, go through PyAV
(``engines.video.film.sample_frames``), a few frames per second of each.
"""

from __future__ import annotations

import glob
import hashlib
import math
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from engines import color
from engines.files import atomic_path
from engines.media.crop import centre_square
from engines.media.formats import IMAGE_SUFFIXES, VIDEO_SUFFIXES

# An image whose 95th-percentile chroma (CIELAB, sqrt(a^2 + b^2)) is below this is gray or nearly so
# (including most sepia and toned prints): it would teach the model to output gray.
GRAY_CHROMA_P95 = 6.0
# Frames taken from each second of a film: neighbouring frames are near-duplicates, so more would add
# decoding time and weight one scene over others rather than information.
VIDEO_FRAMES_PER_SECOND = 2.0
# A film's frames are named "<film>#frame<index>"; the validation split keeps all of them on one side.
FRAME_MARK = "#frame"
# A source with this suffix lists images and films, one per line: a chosen subset of a folder.
LIST_SUFFIX = ".txt"


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    # "r|*" reads the shard as a stream: no seeking, nothing unpacked to disk.
    with tarfile.open(path, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                f = tar.extractfile(member)
                if f is not None:
                    yield member.name, f.read()


class DataError(ValueError):
    """A training source that cannot be used: the message is one line for the user."""


def _is_list(path: Path) -> bool:
    return path.suffix.lower() == LIST_SUFFIX


def listed_files(path: Path) -> list[tuple[str, Path]]:
    """A list source's ``(line, file)`` pairs: one image or film per line, relative to the list's
    folder; blank lines and lines starting with ``#`` are skipped. Each must exist and be an image or film."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        file = path.parent / line
        if not file.is_file():
            raise DataError(f"source {path}, line {number}: {line} not found")
        if not (file.suffix.lower() in IMAGE_SUFFIXES or _is_film(file)):
            raise DataError(f"source {path}, line {number}: {line} is not an image or a video file")
        pairs.append((line, file))
    return pairs


def check_source(path: Path) -> None:
    """Raise ``DataError`` unless ``path`` is a folder, a tar archive, a film (by suffix) or a list
    of images and films whose every entry exists."""
    if not path.exists():
        raise DataError(f"source {path}: not found")
    if _is_list(path) and path.is_file():
        listed_files(path)
    elif not (path.is_dir() or _is_film(path) or tarfile.is_tarfile(path)):
        raise DataError(f"source {path}: not a folder, a tar archive, a video file or a {LIST_SUFFIX} list")


def decode_rgb(data: bytes, size: int) -> np.ndarray | None:
    """Encoded image -> ``rgb_u8 (size, size, 3)``: centre crop to a square, area-resize. None if undecodable."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return centre_square(bgr[:, :, ::-1], size)


def _is_film(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _film_frames(path: Path, name: str, size: int) -> Iterator[tuple[str, np.ndarray]]:
    # Imported here: PyAV is needed for films only, and a GPU machine training on packed images may lack it.
    from engines.video.streams import VideoError, sample_frames

    try:
        for index, rgb in sample_frames(path, VIDEO_FRAMES_PER_SECOND):
            yield f"{name}{FRAME_MARK}{index:06d}", centre_square(rgb, size)
    except VideoError:
        return  # unreadable, like an undecodable image: skipped


def _decode_file(p: Path, name: str, size: int) -> Iterator[tuple[str, np.ndarray]]:
    """An image file's one picture, or a film's sampled frames; nothing for anything else."""
    if p.suffix.lower() in IMAGE_SUFFIXES:
        rgb = decode_rgb(p.read_bytes(), size)
        if rgb is not None:
            yield name, rgb
    elif _is_film(p):
        yield from _film_frames(p, name, size)


def iter_decoded(path: Path, size: int) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, rgb_u8 (size, size, 3))`` for every image of a source: a tar shard's image
    members, a folder's images and films (searched recursively), a list's images and films, or a
    film's sampled frames."""
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                yield from _decode_file(p, str(p.relative_to(path)), size)
    elif _is_list(path):
        for line, p in listed_files(path):
            yield from _decode_file(p, line, size)
    elif _is_film(path):
        yield from _film_frames(path, path.name, size)
    else:
        for name, data in _iter_tar(path):
            rgb = decode_rgb(data, size)
            if rgb is not None:
                yield name, rgb


def chroma_p95(rgb_u8: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> the 95th percentile of CIELAB chroma per image, ``(N,)``."""
    out = []
    for i in range(0, len(rgb_u8), 2048):
        x = torch.from_numpy(rgb_u8[i : i + 2048]).permute(0, 3, 1, 2).float() / 255
        ab = color.rgb_to_lab(x)[:, 1:]
        chroma = ab.square().sum(1).sqrt().flatten(1)
        out.append(torch.quantile(chroma, 0.95, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _split_key(name: str) -> int:
    return zlib.crc32(name.split(FRAME_MARK)[0].encode()) % 10_000


def validation_mask(names: list[str], fraction: float) -> np.ndarray:
    """Which of a source's images are held out for validation: a stable split by name, so the same
    image, and every frame of the same film, is always on the same side. A source too small for
    ``fraction`` to pick anything (a few films, a few dozen photos) still holds out its first image or
    film in split order, as long as something is left to train on."""
    keys = np.array([_split_key(n) for n in names], dtype=np.int64)
    val = keys < fraction * 10_000
    if fraction > 0 and not val.any() and len(set(keys.tolist())) > 1:
        val = keys == keys.min()
    return val


@dataclass
class ImageSet:
    """Decoded images of one source at one size; ``names`` index ``rgb_u8``."""

    rgb_u8: np.ndarray  # (N, S, S, 3)
    names: list[str]
    dropped_gray: int


def _fingerprint(path: Path) -> str:
    """Size and modification time of a file, or of every file in a folder's tree or a list (and of the
    list itself): a cache made before a photo was added, replaced or removed is not reused."""
    if path.is_dir():
        files = [(str(p.relative_to(path)), p) for p in sorted(path.rglob("*")) if p.is_file()]
    elif _is_list(path):
        files = [(path.name, path), *listed_files(path)]
    else:
        st = path.stat()
        return f"{st.st_size}|{st.st_mtime_ns}"
    h = hashlib.sha1()
    for name, p in files:
        st = p.stat()
        h.update(f"{name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def load_source(path: Path, size: int, cache_dir: Path, keep_gray: bool = False) -> ImageSet:
    """Decode a source once (gray images dropped unless ``keep_gray``) and cache it under ``cache_dir``."""
    check_source(path)
    gray = "keep" if keep_gray else GRAY_CHROMA_P95
    films = f"|{VIDEO_FRAMES_PER_SECOND}" if path.is_dir() or _is_film(path) or _is_list(path) else ""
    # The name says which source and settings (``ident``) and which state of its files (``state``): a
    # source changed since (or copied afresh, with new modification times) is decoded again, and the
    # cache of its earlier state is removed then rather than left to fill the disk.
    ident = hashlib.sha1(f"{path.resolve()}|{size}|{gray}{films}".encode()).hexdigest()[:10]
    state = hashlib.sha1(_fingerprint(path).encode()).hexdigest()[:10]
    cache = cache_dir / f"{path.name}-{size}-{ident}-{state}.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        return ImageSet(z["rgb_u8"], list(z["names"]), int(z["dropped_gray"]))
    names, images = [], []
    try:
        for name, rgb in iter_decoded(path, size):
            names.append(name)
            images.append(rgb)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # a truncated or corrupt shard
        raise DataError(f"source {path}: cannot be read ({' '.join(str(e).split()) or type(e).__name__})") from e
    rgb_u8 = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    keep = np.ones(len(rgb_u8), bool) if keep_gray else chroma_p95(rgb_u8) >= GRAY_CHROMA_P95
    result = ImageSet(rgb_u8[keep], [n for n, k in zip(names, keep) if k], int((~keep).sum()))
    with atomic_path(cache) as tmp:  # the temporary name ends in .npz, so savez adds nothing
        np.savez(tmp, rgb_u8=result.rgb_u8, names=np.array(result.names), dropped_gray=result.dropped_gray)
    for stale in cache_dir.glob(f"{glob.escape(path.name)}-{size}-{ident}-*.npz"):
        if stale != cache:
            stale.unlink(missing_ok=True)
    return result


def split(images: ImageSet, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` images (``validation_mask``)."""
    val = validation_mask(images.names, val_fraction)
    return images.rgb_u8[~val], images.rgb_u8[val]


def training_sets(
    sources: tuple[str, ...], sizes: tuple[int, ...], repeats: tuple[int, ...], val_fraction: float, cache_dir: Path
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every source decoded and split: ``(train, validation)`` arrays, one per source, each training
    array listed ``repeats`` times (the same array, no copy), validation arrays once."""
    train, val, _, _ = _split_sources(sources, sizes, repeats, val_fraction, cache_dir)
    return train, val


def training_sets_with_classes(
    sources: tuple[str, ...], sizes: tuple[int, ...], repeats: tuple[int, ...], val_fraction: float, cache_dir: Path
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]:
    """As ``training_sets``, and ``(labels, classes)``: each training image's class index (``class_of``;
    the classes every class found, sorted), concatenated in the order the sampler's indices count them."""
    train, val, names, _ = _split_sources(sources, sizes, repeats, val_fraction, cache_dir)
    classes = _classes(names)
    return train, val, _labels(names, classes), classes


def _split_sources(
    sources: tuple[str, ...], sizes: tuple[int, ...], repeats: tuple[int, ...], val_fraction: float, cache_dir: Path
) -> tuple[list[np.ndarray], list[np.ndarray], list[list[str]], list[list[str]]]:
    """``(train, validation, train names, validation names)``: ``training_sets``'s arrays and each
    array's image names."""
    for src in sources:  # all of them before decoding any: a typo in the last should not wait
        check_source(Path(src))
    train, val, train_names, val_names = [], [], [], []
    for src, size, n in zip(sources, sizes, repeats or (1,) * len(sources)):
        images = load_source(Path(src), size, cache_dir)
        is_val = validation_mask(images.names, val_fraction)
        train += [images.rgb_u8[~is_val]] * n
        train_names += [[name for name, v in zip(images.names, is_val) if not v]] * n
        val.append(images.rgb_u8[is_val])
        val_names.append([name for name, v in zip(images.names, is_val) if v])
    return train, val, train_names, val_names


def _classes(groups: list[list[str]]) -> list[str]:
    """Every class (``class_of``) among the names, sorted."""
    return sorted({class_of(n) for group in groups for n in group})


def _labels(groups: list[list[str]], classes: list[str]) -> np.ndarray:
    """The names' class indices, concatenated in order."""
    return np.concatenate([class_labels(group, classes) for group in groups]) if groups else np.zeros(0, np.int64)


def class_of(name: str) -> str:
    """A labelled image's class: its parent folder (sources laid out ``<split>/<class>/<image>``)."""
    return Path(name).parent.name


def class_labels(names: list[str], classes: list[str]) -> np.ndarray:
    """Each name's index in ``classes`` (``class_of``), -1 for a class not in the list."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(class_of(n), -1) for n in names], dtype=np.int64)


@dataclass
class LabelledSets:
    """Labelled sources decoded and split (gray images dropped): training arrays, one per source (a
    repeated source listed again), with their labels concatenated in the same order, and the
    validation images with theirs."""

    classes: list[str]
    train: list[np.ndarray]
    train_labels: np.ndarray
    val_rgb_u8: np.ndarray
    val_labels: np.ndarray


def labelled_sets(
    sources: tuple[str, ...], sizes: tuple[int, ...], repeats: tuple[int, ...], val_fraction: float, cache_dir: Path
) -> LabelledSets:
    """As ``training_sets``, with each image's class (``class_of``); the classes are every class found, sorted."""
    train, val, train_names, val_names = _split_sources(sources, sizes, repeats, val_fraction, cache_dir)
    if not train or sum(len(t) for t in train) == 0:
        raise DataError("no colour training images found in the configured sources")
    classes = _classes([*train_names, *val_names])
    return LabelledSets(classes, train, _labels(train_names, classes), np.concatenate(val), _labels(val_names, classes))


def crop_params(n: int, gen: torch.Generator, min_scale: float = 0.5, flip: bool = True) -> torch.Tensor:
    """Random scaled crops with flips as affine matrices ``(n, 2, 3)`` for ``F.affine_grid``.

    Each sample's crop side is ``sqrt(U(min_scale, 1))`` of the image side (area scale jitter), at a
    random position inside the image; horizontal flips with probability 1/2.
    """
    side = torch.sqrt(torch.empty(n).uniform_(min_scale, 1.0, generator=gen))
    tx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - side)
    ty = (torch.rand(n, generator=gen) * 2 - 1) * (1 - side)
    sx = side * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = side, ty
    return theta


def apply_crops(rgb_u8: torch.Tensor, theta: torch.Tensor, out_size: int) -> torch.Tensor:
    """``(N, S, S, 3) uint8`` and ``theta (N, 2, 3)`` -> crops ``(N, 3, out, out)`` in [0, 1], in one ``grid_sample``."""
    x = rgb_u8.permute(0, 3, 1, 2).float() / 255
    grid = F.affine_grid(theta, [len(x), 3, out_size, out_size], align_corners=False)
    # Bilinear is fine for downscaling by at most 2x (the largest source here is 100 px -> 64).
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False).clamp(0, 1)


class BatchSampler:
    """Endless shuffled batches over several sources, each drawn in proportion to its size.

    Its position (epoch and offset) and generator state are saved with checkpoints, so a resumed
    run sees exactly the batches the uninterrupted run would have seen.
    """

    def __init__(
        self,
        sources: list[np.ndarray],
        batch_size: int,
        out_size: int,
        seed: int,
        min_scale: float,
        out_sizes: tuple[int, ...] = (),
    ):
        self.sources = [torch.from_numpy(s) for s in sources]
        self.sizes = [len(s) for s in sources]
        self.batch_size = batch_size
        self.out_size = out_size
        self.out_sizes = tuple(out_sizes)  # multi-scale: each batch's size drawn from these
        self.min_scale = min_scale
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation()

    def __len__(self) -> int:
        return math.ceil(sum(self.sizes) / self.batch_size)

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(self.gen.initial_seed()) + self.epoch)
        return torch.randperm(sum(self.sizes), generator=g)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self.gen.set_state(state["gen"])
        self._order = self._permutation()

    def next_batch(self, rank: int = 0, world: int = 1, with_index: bool = False):
        """This rank's share of the next global batch: ``(B / world, 3, out, out)`` sRGB in [0, 1]
        (``out`` one of ``out_sizes`` when given, the same on every rank).

        Every rank draws the same global batch and the same crop parameters, and keeps its own
        contiguous slice, so the ranks together train on exactly what one process would; each rank
        only decodes and resamples its own images. ``with_index`` also returns the images' indices
        into the concatenated sources (a classifier's labels are looked up by them).
        """
        if self.offset + self.batch_size > len(self._order):  # drop the tail: every batch is full
            self.epoch, self.offset = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        theta = crop_params(len(idx), self.gen, self.min_scale)
        size = self.out_size
        if self.out_sizes:  # drawn after the crops, from the same generator: every rank draws the same
            size = self.out_sizes[int(torch.randint(len(self.out_sizes), (1,), generator=self.gen))]
        per = self.batch_size // world
        idx, theta = idx[rank * per : (rank + 1) * per], theta[rank * per : (rank + 1) * per]
        out = torch.empty(len(idx), 3, size, size)
        start = 0
        for src, n in zip(self.sources, self.sizes):
            mine = (idx >= start) & (idx < start + n)
            if mine.any():
                out[mine] = apply_crops(src[idx[mine] - start], theta[mine], size)
            start += n
        return (out, idx) if with_index else out
