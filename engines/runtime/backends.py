"""Backends: which runtime executes the engine's network, why it was picked, and the runners themselves.

- ``tensorrt``: a TensorRT engine built from the ONNX export (``engines.runtime.trt_backend``; UNVERIFIED:
  TensorRT cannot be installed on our machines).
- ``cuda``: PyTorch on the GPU, FP16 weights and activations, channels-last, cuDNN autotuning, a CUDA
  graph per input shape, pinned host memory, batches split to fit free GPU memory (``CudaModel``;
  UNVERIFIED: no GPU was available when it was written; the FP16 tolerance is tested on CPU).
- ``onnxruntime``: ONNX Runtime on the CPU (``OnnxRuntimeModel``), the export cached by weights hash.
- ``cpu``: PyTorch on the CPU, inference mode.

``auto`` tries TensorRT, then CUDA, then the CPU. On the CPU it times ONNX Runtime against PyTorch
once for this engine, working size and machine, and takes ONNX Runtime only when it is clearly
faster (``ORT_MIN_SPEEDUP``); the verdict is cached. Every skip and pick is recorded in ``notes``.
Before any of this the CLI tries the path that needs no PyTorch at all (``engines.ort_pipeline``),
which this module's CPU backends prepare by leaving the engine's export in the cache.
"""

from __future__ import annotations

import json
import platform
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from engines.files import cache_dir, write_text
from engines.runtime import trt_backend
from engines.runtime.host import retain_freed_memory  # noqa: F401 - re-exported
from engines.runtime.precision import (  # noqa: F401 - BF16_MAX_AB_DIFF and cpu_flags re-exported
    BF16_MAX_AB_DIFF,
    Bf16Model,
    cpu_flags,
    cpu_has_fast_bf16,
    float32_network,
)

BACKENDS = ("auto", "tensorrt", "cuda", "onnxruntime", "cpu")
# ONNX Runtime replaces PyTorch on the CPU only when at least this much faster (timings wobble ~10%).
ORT_MIN_SPEEDUP = 1.2
_RACE_BATCH = 8  # the photo pipeline's batch and the film pipeline's
# FP16 against FP32, largest |ab| difference over a photo allowed (CIELAB units; a just-noticeable
# difference is about 2). Measured on CPU FP16 kernels: 0.012-0.026 for the shipped engines
# (tests/test_runtime.py); GPU kernels may accumulate differently, hence the margin.
FP16_MAX_AB_DIFF = 0.5


class BackendUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Backend:
    name: str  # "tensorrt", "cuda", "onnxruntime", "cpu", or "cpu-fastest" (auto on a machine without GPU)
    device: torch.device
    notes: tuple[str, ...]  # why this one was picked and why others were skipped


def _cuda_problem() -> str | None:
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return f"no CUDA GPU visible to PyTorch {torch.__version__} ({build})"
    return None


def ort_problem() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "the onnxruntime package is not installed"
    return None


def select_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "cpu":
        return Backend("cpu", torch.device("cpu"), ("cpu: requested",))
    if name == "onnxruntime":
        if problem := ort_problem():
            raise BackendUnavailable(f"onnxruntime backend unavailable: {problem}")
        return Backend("onnxruntime", torch.device("cpu"), ("onnxruntime: requested",))
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
        return Backend("cuda", torch.device("cuda"), ("cuda: requested (unverified backend)",))
    notes = [f"tensorrt skipped: {trt_problem}"]
    if problem is None:
        return Backend("cuda", torch.device("cuda"), (*notes, f"cuda picked: {torch.cuda.get_device_name()}"))
    notes.append(f"cuda skipped: {problem}")
    return Backend("cpu-fastest", torch.device("cpu"), tuple(notes))


# --- runners: stand in for the U-Net in engines.pipeline.Colorizer (same input, output, ``multiple``) ---


class OnnxRuntimeModel(torch.nn.Module):
    """The engine's ONNX export run by ONNX Runtime on the CPU; torch CPU tensors in and out."""

    def __init__(self, net: torch.nn.Module, weights_sha256: str, threads: int | None = None):
        super().__init__()
        from engines.runtime.export import export_onnx

        path = cache_dir() / "onnx" / f"{weights_sha256[:32]}.onnx"
        if not path.exists():  # the export is written atomically, so a present file is complete
            path.parent.mkdir(parents=True, exist_ok=True)
            export_onnx(net, path)
        self.path = path
        try:
            self.set_threads(threads or torch.get_num_threads())
        except Exception:  # noqa: BLE001 - a damaged cache file (ONNX Runtime raises its own types): export again
            path.unlink(missing_ok=True)
            export_onnx(net, path)
            self.set_threads(threads or torch.get_num_threads())
        self.input_name = self.session.get_inputs()[0].name
        self.multiple = net.multiple
        self.config = net.config

    def set_threads(self, n: int) -> None:
        """A session's thread pool is fixed when it is made: make a new one (tens of milliseconds)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


class CudaModel(torch.nn.Module):  # pragma: no cover - needs a GPU
    """PyTorch on the GPU, tuned. UNVERIFIED: written without a GPU at hand.

    FP16 weights and activations (the shipped engines stay within ``FP16_MAX_AB_DIFF`` of FP32),
    channels-last memory (tensor cores want NHWC), cuDNN autotuning, and one CUDA graph per input
    shape (video frames all have one shape: launch overhead disappears). Inputs may come from the
    host: they are copied from pinned memory without blocking the host. A batch larger than free
    GPU memory allows is split.
    """

    MAX_GRAPHS = 8

    def __init__(self, net: torch.nn.Module, half: bool = True, graphs: bool = True):
        super().__init__()
        torch.backends.cudnn.benchmark = True
        self.dtype = torch.float16 if half else torch.float32
        self.net = net.to("cuda", dtype=self.dtype, memory_format=torch.channels_last).eval()
        self.graphs = graphs
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self._chunk: dict[tuple, int] = {}
        self.multiple = net.multiple
        self.config = net.config

    def _max_batch(self, x: torch.Tensor) -> int:
        """Images per call that fit in half the free GPU memory, measured on one image of this shape."""
        key = tuple(x.shape[1:])
        if key not in self._chunk:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self.net(x[:1])
            torch.cuda.synchronize()
            per_image = max(1, torch.cuda.max_memory_allocated() - base)
            free, _ = torch.cuda.mem_get_info()
            self._chunk[key] = max(1, int(0.5 * free // per_image))
        return self._chunk[key]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if not self.graphs:
            return self.net(x)
        key = tuple(x.shape)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture: cuDNN picks its algorithms here
                for _ in range(2):
                    self.net(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.net(static_in)
            entry = (graph, static_in, static_out)
            self._graphs[key] = entry
            if len(self._graphs) > self.MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            x = x.pin_memory().to("cuda", non_blocking=True)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        n = self._max_batch(x)
        return torch.cat([self._run(x[i : i + n]) for i in range(0, len(x), n)]).float()


# --- the CPU choice: ONNX Runtime or PyTorch, measured on this machine ---


def _race(fa, fb, repeat: int = 7) -> tuple[float, float]:
    """Best times of two functions, called alternately so that both see the same machine load
    (the best of several runs is the least disturbed by other work)."""
    for _ in range(3):  # warm-up: first calls build kernels and thread pools
        fa(), fb()
    ta, tb = [], []
    for _ in range(repeat):
        for fn, times in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(ta), min(tb)


def cpu_choice(net: torch.nn.Module, weights_sha256: str, working_size: int) -> tuple[torch.nn.Module, str]:
    """The faster CPU runner for this engine at this working size, and a note saying why.

    Measured once (a second or two) and remembered in ``cache_dir()/cpu-choice.json`` under the weights,
    working size, the raced setting, CPU and library versions, so later runs (a shell loop over a
    folder) start at once.
    """
    if problem := ort_problem():
        return net, f"cpu (PyTorch) picked: onnxruntime skipped, {problem}"
    import onnxruntime

    key = "|".join(
        map(
            str,
            (
                weights_sha256[:32],
                working_size,
                f"batch {_RACE_BATCH}, 1 thread",
                platform.processor() or platform.machine(),
                torch.__version__,
                onnxruntime.__version__,
            ),
        )
    )
    store = cache_dir() / "cpu-choice.json"
    try:
        known = json.loads(store.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    # Only build the ONNX Runtime session when it is to be timed or used: a cached "PyTorch" verdict
    # then costs nothing per run.
    ort_model = None
    speedup = known.get(key)
    how = "cached measurement"
    if not isinstance(speedup, (int, float)):
        # Raced as the pipelines run it: batches of 8, one thread (their stages run in parallel). At one
        # image on both cores ONNX Runtime led by 1.1-1.7x on a CPU with AVX-512 BF16, where in the
        # pipelines' setting PyTorch's bf16 network was the faster (ONNX Runtime 0.55x).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ort_model = OnnxRuntimeModel(float32_network(net), weights_sha256, threads=1)  # float32
            side = -(-working_size // net.multiple) * net.multiple
            x = torch.zeros(_RACE_BATCH, net.config.in_channels, side, side)
            with torch.inference_mode():
                t_torch, t_ort = _race(lambda: net(x), lambda: ort_model(x))
        finally:
            torch.set_num_threads(threads)
        speedup = t_torch / t_ort
        known[key] = speedup
        how = "measured now"
        try:
            write_text(store, json.dumps(known, indent=1))
        except OSError:
            pass  # a read-only cache only costs the measurement next time
    if speedup >= ORT_MIN_SPEEDUP:
        ort_model = ort_model or OnnxRuntimeModel(float32_network(net), weights_sha256)
        return ort_model, f"onnxruntime picked: {speedup:.2f}x PyTorch's speed on this CPU at {working_size} ({how})"
    return net, (
        f"cpu (PyTorch) picked: onnxruntime only {speedup:.2f}x PyTorch's speed at {working_size}, "
        f"below {ORT_MIN_SPEEDUP}x ({how})"
    )
