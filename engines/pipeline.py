"""The photo pipeline: full-resolution L -> working-size L -> engine -> ab -> upsampled ab -> RGB.

Luminance is never touched by the model: the output's CIELAB L is the input's (up to 8/16-bit
rounding). Only chroma is predicted, at a small working size, and upsampled: chroma is
low-frequency, so this costs little quality and makes the engine cost independent of photo size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from engines import color
from engines.models import checkpoint, classification, gan, regression
from engines.models.registry import get_spec
from engines.models.unet import UNet
from engines.runtime import backends as runtime
from engines.runtime import trt_backend
from engines.runtime.backends import Backend
from engines.runtime.shapes import work_shape

# Each family turns the network's raw output into ab (CIELAB units): ``decode(raw, family_state, **options)``.
FAMILIES: dict[str, Callable[..., torch.Tensor]] = {
    "regression": regression.decode,
    "classification": classification.decode,
    "gan": gan.decode,
}

# Rows per band when converting back to RGB, so a very large photo needs bounded extra memory.
_BAND_PIXELS = 2_000_000


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, edges handled by replication. ``x (N, C, H, W)`` float32 on the CPU.

    OpenCV's running-sum box filter per plane (``BORDER_REPLICATE``): the same as ``avg_pool2d`` of
    the replicate-padded planes up to float rounding, and 10-20x faster at working sizes.
    """
    planes = x.detach().float().reshape(-1, *x.shape[-2:]).contiguous().numpy()
    out = np.empty_like(planes)
    for plane, dst in zip(planes, out):
        cv2.blur(plane, (2 * r + 1, 2 * r + 1), dst=dst, borderType=cv2.BORDER_REPLICATE)
    return torch.from_numpy(out).view(x.shape)


def guided_upsample(
    l_small: torch.Tensor, ab_small: torch.Tensor, l_full: torch.Tensor, r: int = 2, eps: float = 1e-3
) -> torch.Tensor:
    """Fast guided filter (He and Sun 2015): upsample ab so that its edges follow full-resolution L.

    Per window at working size, ab is fitted as a linear function of L (``ab ~ a * L + b``); the
    coefficients are upsampled bilinearly and applied to full-resolution L. Where ab does not vary
    with L the fit is flat and this equals plain bilinear upsampling.
    ``l_small (1, 1, h, w)``, ``ab_small (1, 2, h, w)``, ``l_full (1, 1, H, W)``, L in [0, 100].
    """
    i_small = l_small / 100
    mean_i, mean_p = _box(i_small, r), _box(ab_small, r)
    cov = _box(i_small * ab_small, r) - mean_i * mean_p
    var = _box(i_small * i_small, r) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    # Full size: OpenCV's bilinear resize (the same half-pixel grid as F.interpolate with
    # align_corners=False) on channels-last coefficients, then a * L + b, 3-5x faster than torch's
    # planar upsampling on the CPU. The 1/100 of L is folded into a at the small size.
    a, b = (_box(t, r).permute(0, 2, 3, 1).contiguous().numpy() for t in (a / 100, b))
    n, (h, w) = l_full.shape[0], l_full.shape[-2:]
    out = torch.empty((n, h, w, 2), dtype=torch.float32)
    for k in range(n):
        l2 = np.ascontiguousarray(l_full[k, 0], dtype=np.float32)
        full_a = cv2.multiply(cv2.resize(a[k], (w, h), interpolation=cv2.INTER_LINEAR), cv2.merge((l2, l2)))
        cv2.add(full_a, cv2.resize(b[k], (w, h), interpolation=cv2.INTER_LINEAR), dst=out[k].numpy())
    return out.permute(0, 3, 1, 2)  # (N, 2, H, W), laid out channels-last (what the film smoother takes)


class Colorizer:
    """A loaded engine on a device. ``colorize`` takes and returns ``rgb (H, W, 3) float32`` in [0, 1]."""

    def __init__(
        self,
        model: UNet,
        working_size: int,
        device: torch.device,
        name: str = "custom",
        guided: bool = True,
        decode: Callable[[torch.Tensor], torch.Tensor] = color.denormalize_ab,
        noise_input: bool = False,
        seed: int = 0,
        color_space: str = "lab",
        notes: tuple[str, ...] = (),
        saturation: float = 1.0,
    ):
        self.model = model.to(device).eval()
        self.notes = notes  # which backend runs the engine, and why
        self.decode = decode  # raw network output -> ab in CIELAB units
        self.working_size = working_size
        self.device = device
        self.name = name
        self.guided = guided
        # GAN generators with a noise channel: the seed picks one of the plausible colourings.
        self.noise_input = noise_input
        self.seed = seed
        self.color_space = color_space  # what the engine predicts chroma in; re-expressed as ab below
        self.saturation = saturation  # see ``predict_ab``

    def work_shape(self, h: int, w: int) -> tuple[int, int]:
        """The network input's (height, width) for a photo of ``h x w`` (``engines.runtime.shapes.work_shape``:
        the long side scaled to the working size, each side stretched up to the network's multiple).
        Photos with equal shapes share a batch."""
        return work_shape(h, w, self.working_size, self.model.multiple)

    def _shrink(self, l: torch.Tensor) -> torch.Tensor:
        """Full-resolution L -> L at ``work_shape`` (antialiased)."""
        size = self.work_shape(*l.shape[-2:])
        if size == tuple(l.shape[-2:]):
            return l
        return F.interpolate(l, size=size, mode="bilinear", antialias=True, align_corners=False)

    def _network_input(self, l_small: torch.Tensor) -> torch.Tensor:
        return color.input_from_lightness(l_small, self.color_space)

    def _engine(self, l_in: torch.Tensor) -> torch.Tensor:
        """Network input -> chroma at the work shape, one call for the whole batch."""
        # (The CUDA runner copies host tensors itself, from pinned memory.) Contiguous: a channels-last
        # output would carry its layout into the full-size interpolation, measured 5x slower there.
        ab_work = self.decode(self.model(l_in).float().cpu().contiguous())
        if ab_work.shape[-2:] != l_in.shape[-2:]:  # a family that predicts at reduced resolution
            ab_work = F.interpolate(ab_work, size=l_in.shape[-2:], mode="bilinear", align_corners=False)
        return ab_work

    @torch.inference_mode()  # also when a pipeline calls it on a thread of its own (see predict_ab_many_deferred)
    def _full_size_ab(self, l: torch.Tensor, l_small: torch.Tensor, ab_work: torch.Tensor) -> torch.Tensor:
        """Working-size chroma -> ab scaled by the saturation, upsampled to ``l``'s size."""
        (h, w), (sh, sw) = l.shape[-2:], l_small.shape[-2:]
        ab_small = color.chroma_to_ab(l_small, ab_work, self.color_space)
        if self.saturation != 1:
            ab_small = ab_small * self.saturation
        if (sh, sw) == (h, w):
            return ab_small
        if self.guided:
            return guided_upsample(l_small, ab_small, l)
        return F.interpolate(ab_small, size=(h, w), mode="bilinear", align_corners=False)

    def _check_saturation(self) -> None:
        if self.saturation < 0:
            raise ValueError(f"saturation must be at least 0, got {self.saturation}")

    @torch.inference_mode()
    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        """Full-resolution L ``(N, 1, H, W)`` in [0, 100] -> ab ``(N, 2, H, W)`` at the same size.

        A batch (e.g. video frames) goes through the engine in one call. The predicted ab is scaled by
        ``self.saturation`` (1: as predicted, 0: gray), before any gamut mapping, which happens when L and ab
        are composed. Photos and films both take their ab from here; upsampling and the films' temporal
        smoothing are linear in ab, so scaling here equals scaling their output.
        """
        self._check_saturation()
        l_small = self._shrink(l)
        l_in = self._network_input(l_small)
        if self.noise_input:
            l_in = gan.with_noise(l_in, self.seed)
        return self._full_size_ab(l, l_small, self._engine(l_in))

    def predict_frames(self, l: np.ndarray) -> np.ndarray:
        """``predict_ab`` on NumPy arrays, what ``engines.video.film.colorize_video`` takes: L ``(N, 1, H, W)``
        -> ab ``(N, 2, H, W)`` (laid out channels-last where upsampled)."""
        return self.predict_ab(torch.from_numpy(np.ascontiguousarray(l, dtype=np.float32))).numpy()

    def predict_ab_many(self, ls: list[torch.Tensor]) -> list[torch.Tensor]:
        """Photos' L, each ``(1, 1, H, W)`` (sizes may differ, ``work_shape`` may not) -> their ab, with one
        network call for all. Each photo's ab is ``predict_ab`` of it alone, up to float rounding: the
        network is in eval mode (no batch statistics) and each photo gets the noise map it gets alone."""
        return [finish() for finish in self.predict_ab_many_deferred(ls)]

    @torch.inference_mode()
    def predict_ab_many_deferred(self, ls: list[torch.Tensor]) -> list[Callable[[], torch.Tensor]]:
        """``predict_ab_many`` with each photo's full-size step (upsampling, the part that grows with the
        photo) left to a callable that returns its ab, so that a pipeline can run it on another thread
        than the engine's."""
        self._check_saturation()
        smalls = [self._shrink(l) for l in ls]
        inputs = [self._network_input(s) for s in smalls]
        if self.noise_input:
            inputs = [gan.with_noise(x, self.seed) for x in inputs]
        if len({x.shape for x in inputs}) != 1:
            raise ValueError("photos of one batch must have the same Colorizer.work_shape")
        ab_work = self._engine(torch.cat(inputs))
        return [partial(self._full_size_ab, l, s, ab_work[k : k + 1]) for k, (l, s) in enumerate(zip(ls, smalls))]

    def set_threads(self, n: int) -> None:
        """CPU threads for the engine (PyTorch, or ONNX Runtime's session)."""
        torch.set_num_threads(n)
        if isinstance(self.model, runtime.OnnxRuntimeModel):
            self.model.set_threads(n)

    def get_threads(self) -> int:
        return torch.get_num_threads()

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    @staticmethod
    def lightness(rgb: np.ndarray) -> torch.Tensor:
        """sRGB ``(H, W, 3)`` -> CIELAB L ``(1, 1, H, W)``; any colour is discarded. ``rgb`` float32 in [0, 1],
        or uint8 levels (a decoded 8-bit photo: L looked up per level, ``color.rgb_u8_hwc_to_lightness``,
        several times faster and within 5e-5 of the formula)."""
        if rgb.dtype == np.uint8:
            return torch.from_numpy(color.rgb_u8_hwc_to_lightness(rgb))[None, None]
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)
        with torch.inference_mode():
            return color.rgb_to_lightness(rgb_t)[None]

    @staticmethod
    @torch.inference_mode()
    def compose(l: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
        """L ``(1, 1, H, W)`` and ab ``(1, 2, H, W)`` -> ``rgb (H, W, 3) float32``, L kept, ab fitted into gamut."""
        out = torch.empty((3, *l.shape[-2:]), dtype=torch.float32)
        band = max(1, _BAND_PIXELS // l.shape[-1])
        for y in range(0, l.shape[-2], band):
            out[:, y : y + band] = color.lab_to_rgb_keep_lightness(l[0, :, y : y + band], ab[0, :, y : y + band])
        return out.permute(1, 2, 0).numpy()

    @staticmethod
    @torch.inference_mode()
    def compose_u8(l: torch.Tensor, ab: torch.Tensor) -> np.ndarray:
        """``compose`` rounded to 8 bits, ``rgb (H, W, 3) uint8``, for 8-bit outputs: the film path's
        OpenCV conversion (``color.lab_hwc_to_rgb_u8_keep_lightness``), several times faster than
        ``compose`` and then quantising; a value differs (by one level) only within float rounding of a
        level boundary."""
        return color.lab_hwc_to_rgb_u8_keep_lightness(l[0, 0].numpy(), ab[0].permute(1, 2, 0).numpy())

    def colorize(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb (H, W, 3) float32`` in [0, 1] (any colour is discarded) -> colourised, same shape."""
        l = self.lightness(rgb)
        return self.compose(l, self.predict_ab(l))

    def colorize_many(self, rgbs: list[np.ndarray]) -> list[np.ndarray]:
        """``colorize`` of photos that share a ``work_shape``, through the engine in one batch."""
        ls = [self.lightness(rgb) for rgb in rgbs]
        return [self.compose(l, ab) for l, ab in zip(ls, self.predict_ab_many(ls))]


def _leave_decoded_bundle(path: Path, ckpt: checkpoint.EngineCheckpoint) -> tuple[str, ...]:
    """Export the engine for the photo path without PyTorch (``engines.ort_pipeline``) if the cache lacks
    it (about a second, once per engine file): later runs of photos then start without PyTorch. A note
    if that failed (the run goes on)."""
    from engines.runtime import bundle, export

    if (
        ckpt.arch.in_channels != (2 if ckpt.family == "gan" else 1)
        or ckpt.color_space != "lab"
        or runtime.ort_problem()
    ):
        return ()  # engines that path does not take (engines.ort_pipeline.load)
    try:
        sha = trt_backend.file_sha256(path)
        if bundle.read(sha) is None:
            export.write_decoded_bundle(ckpt.build_model().fold_batch_norm(), ckpt, sha)
    except Exception as e:  # noqa: BLE001 - a cache that cannot be written costs only speed
        return (f"the export for runs without PyTorch failed: {type(e).__name__}: {e}",)
    return ()


def load_colorizer(
    model: str,
    backend: Backend,
    weights: Path | None = None,
    working_size: int | None = None,
    **decode_options: object,
) -> Colorizer:
    """Build the named engine (or a checkpoint file given as ``weights``) on ``backend``'s device.

    ``decode_options`` go to the family's decoder (classification: ``method``, ``temperature``).
    """
    path = weights if weights is not None else get_spec(model).weights_path()
    ckpt = checkpoint.load(path)
    if ckpt.family not in FAMILIES:
        raise checkpoint.CheckpointError(f"{path}: unknown engine family {ckpt.family!r}")
    if decode_options and ckpt.family != "classification":
        raise ValueError(f"decoding options apply to classification engines only, not {ckpt.family}")
    decode = partial(FAMILIES[ckpt.family], family_state=ckpt.family_state, **decode_options)
    size = working_size or ckpt.working_size
    net = ckpt.build_model().fold_batch_norm()  # 1.1-1.6x measured on the CPU in bf16 (UNet.fold_batch_norm)
    notes = backend.notes
    if backend.name == "tensorrt":  # unverified path: see engines/runtime/trt_backend.py
        net = trt_backend.engine_for(path, net, size)
    elif backend.name == "cuda":  # unverified path: see engines/runtime/backends.py
        net = runtime.CudaModel(net)
    elif backend.name == "onnxruntime":
        net = runtime.OnnxRuntimeModel(net, trt_backend.file_sha256(path))
    elif backend.name in ("cpu", "cpu-fastest"):
        # Channels-last (NHWC) lets oneDNN pick its fastest convolutions: 1.2-1.6x measured on this CPU.
        net = net.to(memory_format=torch.channels_last)
        if runtime.cpu_has_fast_bf16():  # AMX / AVX-512 BF16 only (engines.runtime.precision)
            net = runtime.Bf16Model(net)
            notes = (*notes, "cpu: bf16 autocast (the CPU has native bf16)")
    if backend.name == "cpu-fastest":
        net, note = runtime.cpu_choice(net, trt_backend.file_sha256(path), size)
        notes = (*notes, note)
    if backend.name in ("cpu-fastest", "onnxruntime"):
        notes = (*notes, *_leave_decoded_bundle(path, ckpt))
    noise = ckpt.arch.in_channels == 2
    return Colorizer(
        net,
        size,
        backend.device,
        name=model,
        decode=decode,
        noise_input=noise,
        color_space=ckpt.color_space,
        notes=notes,
    )
