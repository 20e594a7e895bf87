"""Writing files so that a crash never leaves half of one, and saying why a file operation failed.

Every writer in the project goes through :func:`atomic_path` (or its two shorthands): the data goes to a
hidden temporary name beside the destination, which is renamed onto it only once complete, so the
destination holds either its old content or the new one, never a torn mix.
"""

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

# Filesystems that cannot fsync (some FUSE and network mounts) say so with one of these.
_NO_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def temp_name(path: Path) -> Path:
    """A hidden, unique name beside ``path`` that keeps its suffix (writers such as ``cv2.imwrite`` and
    ``savefig`` choose the format by it) and stays under the 255-byte name limit for long names."""
    stem = path.name
    while len(os.fsencode(stem)) > 200:
        stem = stem[:-1]
    return path.with_name(f".{stem}.tmp-{secrets.token_hex(4)}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path | str, parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto ``path``, on any error remove it.

    ``with atomic_path(out) as tmp: torch.save(payload, tmp)``. With ``parents`` the folder is created.
    """
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_bytes(path: Path | str, data: bytes, fsync: bool = True, parents: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; with ``fsync`` the rename never becomes visible before the data."""
    with atomic_path(path, parents) as tmp, open(tmp, "xb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            try:
                os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno not in _NO_FSYNC:
                    raise  # a filesystem that cannot fsync is no reason to fail; anything else is


def write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode(), fsync=False)


def os_reason(exc: OSError) -> str:
    """'permission denied', 'no space left on device', ... (strerror without the path), for one-line errors."""
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def cache_dir() -> Path:
    """Where exports, measurements and built engines are cached (``COLORIZE_CACHE_DIR``, else ~/.cache/colorize)."""
    return Path(os.environ.get("COLORIZE_CACHE_DIR", "~/.cache/colorize")).expanduser()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
