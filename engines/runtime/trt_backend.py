"""TensorRT backend (TensorRT 10 API): build from ONNX, cache serialised engines, run on torch tensors.

UNVERIFIED: TensorRT cannot be installed on the machines this project is developed and tested on
(the PyPI ``tensorrt`` packages are stubs that download from NVIDIA's servers, which these machines
cannot reach). ``build_engine`` and ``TensorRTModel`` are written against the TensorRT 10 Python API
but have never run. Everything that does not need TensorRT is tested: cache keys, the entry format
and its checks (a stale or corrupt entry is rebuilt, never trusted), atomic writes, listing and
clearing, and backend selection.

Cache: one file per engine under ``cache_dir()``, named by a key made of the weights' SHA-256, the
TensorRT version, the GPU model and compute capability, the precision and the optimisation profile.
Each file starts with a header (the key's fields and the payload's length and SHA-256) that is
checked on load. A persistent timing cache (``timing.cache``) speeds up later builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engines.files import file_sha256, write_bytes
from engines.runtime.export import INPUT_NAME

MAGIC = b"COLORIZE-TRT\x01"
TIMING_CACHE = "timing.cache"


def cache_dir() -> Path:
    return Path(os.environ.get("COLORIZE_CACHE_DIR", "~/.cache/colorize")).expanduser() / "tensorrt"


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: (batch, height, width) at minimum, optimum and maximum."""

    min_shape: tuple[int, int, int]
    opt_shape: tuple[int, int, int]
    max_shape: tuple[int, int, int]

    @classmethod
    def for_pipeline(cls, working_size: int, max_batch: int = 16, multiple: int = 16) -> Profile:
        """What the pipeline feeds the engine: any batch up to ``max_batch``, sides padded to ``multiple``
        up to the working size (photos of any aspect ratio, small photos at their own size)."""
        side = -(-working_size // multiple) * multiple
        return cls((1, multiple, multiple), (min(8, max_batch), side, side), (max_batch, side, side))


@dataclass(frozen=True)
class CacheKey:
    weights_sha256: str
    tensorrt_version: str
    gpu: str
    compute_capability: str
    precision: str
    profile: Profile

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]

    def filename(self, engine_name: str) -> str:
        return f"{engine_name}-{self.digest()}.engine"


def write_entry(path: Path, key: CacheKey, payload: bytes) -> None:
    """Write a cache entry atomically: a temporary file in the same folder, fsync, rename."""
    header = json.dumps(
        {
            "key": asdict(key),
            "digest": key.digest(),
            "size": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()
    write_bytes(path, MAGIC + struct.pack("<Q", len(header)) + header + payload)


def _read_header(path: Path) -> tuple[dict, int] | None:
    """``(header, payload offset)``, or None when the file is not a well-formed entry."""
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 1 << 20:
                return None
            header = json.loads(f.read(n))
            return (header, len(MAGIC) + 8 + n) if isinstance(header, dict) else None
    except (OSError, struct.error, ValueError):
        return None


def read_header(path: Path) -> dict | None:
    found = _read_header(path)
    return found[0] if found else None


def read_entry(path: Path, key: CacheKey) -> bytes | None:
    """The serialised engine if ``path`` holds a complete, uncorrupted entry for exactly ``key``.

    Anything else (missing, truncated, corrupt, built for other weights, TensorRT, GPU, precision or
    profile) gives None, and a bad file is removed so that it is rebuilt.
    """
    if not path.exists():
        return None
    found = _read_header(path)
    payload = None
    expected = json.loads(json.dumps(asdict(key)))  # as stored: tuples become lists
    if found is not None and found[0].get("digest") == key.digest() and found[0].get("key") == expected:
        header, offset = found
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        if len(data) == header.get("size") and hashlib.sha256(data).hexdigest() == header.get("sha256"):
            payload = data
    if payload is None:
        path.unlink(missing_ok=True)
    return payload


def list_entries(folder: Path | None = None) -> list[tuple[Path, dict | None]]:
    folder = folder or cache_dir()
    return [(p, read_header(p)) for p in sorted(folder.glob("*.engine"))] if folder.is_dir() else []


def clear(folder: Path | None = None) -> int:
    """Remove every cached engine and the timing cache; returns how many files were removed."""
    folder = folder or cache_dir()
    removed = 0
    for p in [*folder.glob("*.engine"), folder / TIMING_CACHE] if folder.is_dir() else []:
        if p.exists():
            p.unlink()
            removed += 1
    return removed


def unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here, or None when it can (as far as can be told without building)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the TensorRT Python package (tensorrt 10) is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch"
    return None


def current_key(weights: Path, precision: str, profile: Profile) -> CacheKey:
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability()
    return CacheKey(
        file_sha256(weights), trt.__version__, torch.cuda.get_device_name(), f"{major}.{minor}", precision, profile
    )


def build_engine(onnx_path: Path, precision: str, profile: Profile, timing_cache: Path) -> bytes:  # pragma: no cover
    """ONNX -> serialised engine with one optimisation profile and a persistent timing cache. UNVERIFIED."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    shapes = [(b, 1, h, w) for b, h, w in (profile.min_shape, profile.opt_shape, profile.max_shape)]
    opt_profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine")
    write_bytes(timing_cache, bytes(memoryview(cache.serialize())), fsync=False)
    return bytes(serialized)


class TensorRTModel(torch.nn.Module):  # pragma: no cover
    """Runs a serialised engine on torch CUDA tensors, on the current stream. UNVERIFIED.

    Stands in for the U-Net in ``engines.pipeline.Colorizer``: same input and output, same ``multiple``.
    """

    def __init__(self, serialized: bytes, multiple: int, out_channels: int, output_stride: int):
        super().__init__()
        import tensorrt as trt

        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(serialized)
        if self._engine is None:
            raise RuntimeError("TensorRT could not deserialise the cached engine")
        self._context = self._engine.create_execution_context()
        self._output_name = next(
            self._engine.get_tensor_name(i)
            for i in range(self._engine.num_io_tensors)
            if self._engine.get_tensor_mode(self._engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT
        )
        self.multiple, self._out_channels, self._stride = multiple, out_channels, output_stride

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        x = l_norm.to("cuda", torch.float32).contiguous()
        n, _, h, w = x.shape
        out = torch.empty(n, self._out_channels, h // self._stride, w // self._stride, device="cuda")
        self._context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self._context.set_tensor_address(self._output_name, out.data_ptr())
        if not self._context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


def engine_for(
    weights: Path, model: torch.nn.Module, working_size: int, precision: str = "fp16"
) -> torch.nn.Module:  # pragma: no cover
    """The cached engine for these weights on this GPU, built (and cached) first if needed. UNVERIFIED."""
    import tempfile

    from engines.runtime.export import export_onnx

    profile = Profile.for_pipeline(working_size, multiple=model.multiple)
    key = current_key(weights, precision, profile)
    path = cache_dir() / key.filename(weights.stem)
    payload = read_entry(path, key)
    if payload is None:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            export_onnx(model, onnx_path)
            payload = build_engine(onnx_path, precision, profile, cache_dir() / TIMING_CACHE)
        write_entry(path, key, payload)
    cfg = model.config
    return TensorRTModel(payload, model.multiple, cfg.out_channels, cfg.output_stride)
