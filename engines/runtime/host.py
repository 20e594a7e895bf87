"""The host, without PyTorch (the paths that run without it use this too): the CPU's feature flags,
and process memory settings for frame- and photo-sized temporaries."""

import functools


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 matrix products natively (AMX or AVX-512 BF16): there oneDNN
    runs bf16 convolutions faster than float32."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


# glibc's mallopt parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks below this come from the heap, not from a fresh mmap (32 MiB: glibc's largest allowed value).
_MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap kept for reuse rather than given back to the system.
_TRIM_THRESHOLD = 512 << 20


def retain_freed_memory() -> bool:
    """Let this process reuse the memory of freed frame-sized arrays instead of mapping fresh pages.

    By default glibc serves every block above 128 KiB-32 MiB (its adaptive threshold) with its own
    mmap and unmaps it when freed, so each full-frame temporary (a 854x480 float32 plane is 1.6 MB)
    costs a page fault per 4 KiB on first touch: measured here as up to half the time of the per-frame
    colour work (compose: 115 -> 64 ms a frame under load). Raising the mmap and trim thresholds keeps
    the freed blocks in the heap, so peak memory is what it was and the faults go. Process-wide, and a
    no-op (False) where the C library is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
