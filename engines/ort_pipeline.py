"""The pipeline without PyTorch, for photos and films: ONNX Runtime runs the engine (its network and
decoding, from the cache: ``engines.runtime.bundle``), NumPy and OpenCV do every step around it that
``engines.pipeline.Colorizer`` does, with the same numbers up to float rounding (tests bound it).

Why: importing PyTorch costs about 2 s of a core, most of a short run (one photo's command took
2.5 s here, a folder of 200 photos 4.9 s), and a shell loop of one ``colorize PHOTO`` per photo pays it
every time, and so does every film. ``--backend auto`` (on a machine where no GPU can be used) and
``--backend onnxruntime`` take this path once a PyTorch run of the engine on the CPU has left its
export in the cache; see ``load`` for what stays on PyTorch's path.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from engines import color_np
from engines.files import file_sha256
from engines.models.registry import get_spec
from engines.runtime import bundle
from engines.runtime.shapes import work_shape

L_CENTER, L_SCALE = 50.0, 50.0  # as engines.color.normalize_l


def gpu_unusable() -> str | None:
    """Why no GPU engine can run here, told without importing PyTorch, or None when one might (then
    ``auto`` asks PyTorch, which takes its import)."""
    if importlib.util.find_spec("tensorrt") is not None:
        return None
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    if version.endswith("+cpu"):
        return f"PyTorch {version} is a CPU-only build"
    if sys.platform.startswith("linux") and not os.path.exists("/dev/nvidiactl"):
        return "no NVIDIA driver (/dev/nvidiactl)"
    return None


def load(
    model: str, backend: str, weights: Path | None, working_size: int | None, decode_options: dict, threads: int = 1
) -> OrtColorizer | None:
    """The engine on this path, or None where PyTorch's pipeline must run: another backend asked for
    (``cpu``, ``cuda``, ``tensorrt``), a GPU that ``auto`` might use, no export cached yet for this engine
    file, one predicting YUV, the ``argmax`` decoding, or decoding options the engine cannot take
    (PyTorch's path reports those). ``threads``: ONNX Runtime's, as the pipeline will want them (its
    stages run in parallel: one on a small machine), so that the session is made once."""
    if backend not in ("auto", "onnxruntime") or importlib.util.find_spec("onnxruntime") is None:
        return None
    why = gpu_unusable()
    if backend == "auto" and why is None:
        return None
    path = weights if weights is not None else get_spec(model).weights_path()
    try:
        sha = file_sha256(path)
    except OSError:
        return None
    meta = bundle.read(sha)
    if meta is None or meta["in_channels"] != (2 if meta["family"] == "gan" else 1) or meta["color_space"] != "lab":
        return None
    options = dict(decode_options)
    method = options.pop("method", "annealed")
    temperature = options.pop("temperature", meta["temperature"])
    correction = options.pop("correction", meta["correction"])
    if decode_options and meta["family"] != "classification":
        return None
    if options or method not in ("annealed", "mean") or not temperature > 0 or (correction and not meta["corrected"]):
        return None
    notes = (f"onnxruntime picked, without PyTorch ({why or 'requested'}): the cached export {meta['onnx'].name}",)
    try:
        return OrtColorizer(
            meta, working_size or meta["working_size"], name=model, notes=notes,
            temperature=1.0 if method == "mean" else temperature, correction=correction, threads=threads,
        )  # fmt: skip
    except Exception:  # noqa: BLE001 - a damaged graph (ONNX Runtime raises its own types): PyTorch's path exports it again
        bundle.paths(sha)[1].unlink(missing_ok=True)
        return None


@functools.lru_cache(maxsize=16)  # a folder's photos and a film share a few sizes
def _antialias_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's antialiased bilinear resampling along one axis (``F.interpolate(mode="bilinear",
    antialias=True, align_corners=False)``, downscaling) as taps: output ``i`` is ``sum_k weights[i, k] *
    input[index[i, k]]``, both ``(n_out, K)``, K the widest filter's length (shorter ones padded with
    zero weights). A triangle filter widened by the scale, each output's weights normalised."""
    scale = n_in / n_out
    support, inv = (scale, 1 / scale) if scale >= 1 else (1.0, 1.0)
    spans, k = [], 1
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = np.maximum(0.0, 1 - np.abs((np.arange(lo, hi) - centre + 0.5) * inv))
        spans.append((lo, w / w.sum() if w.sum() else w))
        k = max(k, hi - lo)
    index = np.zeros((n_out, k), np.intp)
    weights = np.zeros((n_out, k), np.float32)
    for i, (lo, w) in enumerate(spans):
        index[i] = np.minimum(lo + np.arange(k), n_in - 1)
        weights[i, : len(w)] = w
    return index, weights


def shrink(l: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """L ``(H, W)`` -> float32 at ``shape`` (``work_shape``), resampled as ``Colorizer._shrink``."""
    h, w = l.shape
    l = np.ascontiguousarray(l, dtype=np.float32)
    if (h, w) == shape:
        return l
    sh, sw = shape
    # A few taps per output (the filter is as wide as the scale): 0.5 ms for a film's 427x240 chroma-size
    # frame, where a dense weight-matrix product (cv2.gemm) took 29 ms. NumPy's BLAS is avoided on
    # purpose: its own threads fought the pipeline's for the two cores.
    (ri, rw), (ci, cw) = _antialias_taps(h, sh), _antialias_taps(w, sw)
    rows = np.zeros((sh, w), np.float32)
    for k in range(ri.shape[1]):
        rows += rw[:, k, None] * l[ri[:, k]]
    out = np.zeros((sh, sw), np.float32)
    for k in range(ci.shape[1]):
        out += cw[:, k] * rows[:, ci[:, k]]
    return out


def noise_like_torch(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``torch.randn(shape, generator=torch.Generator().manual_seed(seed))`` without PyTorch (within 2e-6;
    a test holds it), for the GAN's noise input: the same seed gives the same colouring on either path.

    PyTorch's CPU generator is the standard MT19937 seeded as NumPy's legacy ``RandomState`` seeds it;
    ``randn`` of 16 values or more draws one 24-bit uniform per value, then turns each run of 16 into
    normals by Box-Muller (value j with j + 8), and redraws the last 16 when the count is not a
    multiple of 16. ``seed`` in [0, 2**32), at least 16 values."""
    n = int(np.prod(shape))
    if n < 16 or not 0 <= seed < 2**32:
        raise ValueError("noise needs at least 16 values and a seed in [0, 2**32)")
    bits = np.random.MT19937()
    bits.state = {
        "bit_generator": "MT19937",
        "state": dict(zip(("key", "pos"), np.random.RandomState(seed).get_state()[1:3])),
    }

    def uniform(k: int) -> np.ndarray:
        return ((bits.random_raw(k) & 0xFFFFFF) * 2.0**-24).astype(np.float32).astype(np.float64)

    def box_muller(u: np.ndarray) -> np.ndarray:  # (k, 16) uniforms -> normals
        radius, theta = np.sqrt(-2 * np.log(1 - u[:, :8])), 2 * np.pi * u[:, 8:]
        return np.concatenate((radius * np.cos(theta), radius * np.sin(theta)), axis=1).ravel()

    out = np.empty(n, np.float32)
    whole = n // 16 * 16
    out[:whole] = box_muller(uniform(n)[:whole].reshape(-1, 16))
    if n % 16:
        out[n - 16 :] = box_muller(uniform(16).reshape(1, 16))
    return out.reshape(shape)


def _box(planes: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window of each ``(h, w)`` plane, edges replicated (``engines.pipeline._box``)."""
    out = np.empty_like(planes)
    for plane, dst in zip(planes, out):
        cv2.blur(plane, (2 * r + 1, 2 * r + 1), dst=dst, borderType=cv2.BORDER_REPLICATE)
    return out


def guided_upsample(
    l_small: np.ndarray, ab_small: np.ndarray, l_full: np.ndarray, r: int = 2, eps: float = 1e-3
) -> np.ndarray:
    """``engines.pipeline.guided_upsample`` for one photo: L ``(h, w)``, ab ``(2, h, w)`` at working size and
    L ``(H, W)`` -> ab ``(H, W, 2)`` float32 (channels-last, what the compose takes)."""
    i_small = (l_small / np.float32(100))[None]
    mean_i, mean_p = _box(i_small, r), _box(ab_small, r)
    cov = _box(i_small * ab_small, r) - mean_i * mean_p
    var = _box(i_small * i_small, r) - mean_i * mean_i
    a = cov / (var + np.float32(eps))
    b = mean_p - a * mean_i
    a, b = (np.ascontiguousarray(_box(t, r).transpose(1, 2, 0)) for t in (a / np.float32(100), b))
    h, w = l_full.shape
    l2 = np.ascontiguousarray(l_full, dtype=np.float32)
    full_a = cv2.multiply(cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR), cv2.merge((l2, l2)))
    return cv2.add(full_a, cv2.resize(b, (w, h), interpolation=cv2.INTER_LINEAR))


class OrtColorizer:
    """``engines.pipeline.Colorizer``'s interface for photos (what ``colorcli.app``'s photo pipeline
    calls), on NumPy arrays: L ``(1, 1, H, W)`` float32, ab ``(1, H, W, 2)`` float32."""

    on_cpu = True

    def __init__(
        self,
        meta: dict,
        working_size: int,
        name: str,
        notes: tuple[str, ...],
        temperature: float,
        correction: float,
        threads: int,
    ):
        self.meta, self.working_size, self.name, self.notes = meta, working_size, name, notes
        self.multiple = meta["multiple"]
        self.noise_input = meta["in_channels"] == 2  # a GAN generator: gray and noise (``gan.with_noise``)
        self.extra_inputs = {}
        if meta["family"] == "classification":
            self.extra_inputs = {
                "temperature": np.array(temperature, np.float32),
                "correction": np.array(correction, np.float32),
            }
        self.seed, self.saturation = 0, 1.0
        self.threads, self.session = threads, None
        self._session()  # made now: a damaged graph fails here, in ``load``

    def set_threads(self, n: int) -> None:
        """ONNX Runtime's threads for the engine (a session's pool is fixed when it is made: a new one)."""
        if n != self.threads:
            self.threads = n
            self._session()

    def _session(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
        self.session = ort.InferenceSession(str(self.meta["onnx"]), opts, providers=["CPUExecutionProvider"])

    def _run(self, feed: dict) -> np.ndarray:
        name = self.session.get_inputs()[0].name
        return self.session.run(None, {name: feed.pop("x"), **feed})[0]

    def get_threads(self) -> int:
        return self.threads

    def work_shape(self, h: int, w: int) -> tuple[int, int]:
        """As ``Colorizer.work_shape``."""
        return work_shape(h, w, self.working_size, self.multiple)

    def _network_input(self, l_small: np.ndarray) -> np.ndarray:
        return ((l_small - np.float32(L_CENTER)) / np.float32(L_SCALE))[None]

    def predict_ab_many_deferred(self, ls: list[np.ndarray]) -> list:
        """As ``Colorizer.predict_ab_many_deferred``: one engine call for photos of one work shape, each
        photo's upsampling left to a callable."""
        if self.saturation < 0:
            raise ValueError(f"saturation must be at least 0, got {self.saturation}")
        smalls = [shrink(l[0, 0], self.work_shape(*l.shape[-2:])) for l in ls]
        inputs = [self._network_input(s) for s in smalls]
        if self.noise_input:  # each photo the map it gets alone, as in PyTorch's path
            inputs = [np.concatenate((x, noise_like_torch(x.shape, self.seed))) for x in inputs]
        if len({x.shape for x in inputs}) != 1:
            raise ValueError("photos of one batch must have the same work_shape")
        ab_work = self._run({"x": np.stack(inputs), **self.extra_inputs})
        return [partial(self._full_size_ab, l, s, ab_work[k]) for k, (l, s) in enumerate(zip(ls, smalls))]

    def predict_frames(self, l: np.ndarray) -> np.ndarray:
        """Film frames' L ``(N, 1, H, W)`` -> ab ``(N, 2, H, W)`` (a channels-last view): what
        ``engines.video.film.colorize_video`` takes."""
        finishes = self.predict_ab_many_deferred([frame[None] for frame in l])
        return np.concatenate([finish() for finish in finishes]).transpose(0, 3, 1, 2)

    def predict_ab_many(self, ls: list[np.ndarray]) -> list[np.ndarray]:
        return [finish() for finish in self.predict_ab_many_deferred(ls)]

    def _full_size_ab(self, l: np.ndarray, l_small: np.ndarray, ab_work: np.ndarray) -> np.ndarray:
        (h, w), (sh, sw) = l.shape[-2:], l_small.shape
        ab_small = ab_work
        if self.saturation != 1:
            ab_small = ab_small * np.float32(self.saturation)
        if (sh, sw) == (h, w):
            return np.ascontiguousarray(ab_small.transpose(1, 2, 0))[None]
        return guided_upsample(l_small, np.ascontiguousarray(ab_small), l[0, 0])[None]

    @staticmethod
    def lightness(rgb: np.ndarray) -> np.ndarray:
        """As ``Colorizer.lightness``: uint8 levels by table, float32 values in [0, 1] by the formula."""
        if rgb.dtype == np.uint8:
            return color_np.rgb_u8_hwc_to_lightness(rgb)[None, None]
        return color_np.rgb_hwc_to_lightness(rgb)[None, None]

    @staticmethod
    def compose_u8(l: np.ndarray, ab: np.ndarray) -> np.ndarray:
        """As ``Colorizer.compose_u8``: L kept, ab fitted into the gamut, 8-bit sRGB ``(H, W, 3)``."""
        return color_np.lab_hwc_to_rgb_u8_keep_lightness(l[0, 0], ab[0])

    @staticmethod
    def compose(l: np.ndarray, ab: np.ndarray) -> np.ndarray:
        """As ``Colorizer.compose`` (float RGB, for photos written at 16 bits): PyTorch's, imported for it."""
        import torch

        from engines.pipeline import Colorizer

        return Colorizer.compose(torch.from_numpy(l), torch.from_numpy(ab[0]).permute(2, 0, 1)[None])
