"""The FID Inception v3 (Heusel et al. 2017) in plain torch, and the Frechet distance between Gaussians.

FID compares two sets of photos by the Frechet distance between Gaussians fitted to their 2048-d
pool features under one particular network: the TensorFlow Inception v3 of 2015-12-05 that the
original FID code used. ``pytorch-fid`` (mseitzer/pytorch-fid) ships a PyTorch port of that network's
weights, ``pt_inception-2015-12-05-6726825d.pth``, a plain state_dict. This module rebuilds the
network under that file's exact module and parameter names so that ``load_fid_inception(path)`` takes
the file as it is; the user supplies it from a local path, since nothing can be downloaded here.

UNVERIFIED: loading the real weights file has never been tried here. Our machines reach no network
but PyPI, so neither the file nor torchvision nor pytorch-fid itself could be fetched to compare
against. The names, shapes and forward pass were written from reading pytorch-fid's
``src/pytorch_fid/inception.py`` and torchvision's ``models/inception.py`` (which pytorch-fid patches),
and the tests check them only against our own reading of that code (tensor count, parameter count,
a few named shapes) and with random weights. One outside hint agrees: pytorch-fid issue #34 quotes a
load error that lists the file's keys ``Conv2d_1a_3x3.bn.num_batches_tracked``,
``Mixed_5b.branch1x1.bn.num_batches_tracked``, ... (so the file holds BatchNorm step counters, and
under these names). Until someone loads the real file and compares features or an FID with
``pytorch-fid``'s on the same photos, treat FIDs from here as not yet comparable with published ones.

The FID network differs from torchvision's Inception v3 in ways that change the numbers:
- the 3x3 average pools inside Mixed_5b-5d, Mixed_6b-6e and Mixed_7b leave the zero padding out of
  the mean (``count_include_pad=False``), as TensorFlow's pooling does;
- Mixed_7c's pool branch uses a 3x3 max pool where the paper and torchvision use an average pool;
- 1008 classes in ``fc`` and no auxiliary classifier (``AuxLogits``) in the file.
Input as in pytorch-fid: sRGB in [0, 1], resized to 299x299 (bilinear, ``align_corners=False``, no
antialiasing), then scaled to [-1, 1] by ``2x - 1``. No ImageNet mean/std standardisation.

The Frechet distance uses numpy only (no scipy): ``tr sqrt(S1 S2)`` is the sum of the square roots of
the eigenvalues of ``sqrt(S1) S2 sqrt(S1)``, a symmetric PSD matrix with the same spectrum, so ``eigh``
suffices where pytorch-fid calls ``scipy.linalg.sqrtm``. Results agree to round-off for well-conditioned
covariances; for singular ones (fewer photos than 2048) pytorch-fid adds ``1e-6 I`` (only when ``sqrtm``
fails), we set eigenvalues below the round-off level (negative ones included) to 0 instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub names files "<name>-<first 8 hex digits of the SHA-256>.<ext>"; assumed here, not checked
# against the real file (see the module docstring).
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015 TF graph's output count (only 1000 of them are ImageNet classes)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001, TensorFlow's) -> ReLU. Submodule names ``conv``/``bn`` are the file's."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 SAME average pool divides by the number of real pixels, not 9, at the borders.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b-5d): 1x1, 5x5, double 3x3 and pool branches; out 224 + ``pool_features``."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a); out 384 + 96 + ``cin``."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b-6e); out 768."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            bd = conv(bd)
        bd = self.branch7x7dbl_5(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a); out 320 + 192 + ``cin``."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 convolutions (Mixed_7b, Mixed_7c); out 2048.

    ``pool`` is "avg" (Mixed_7b, TF-style average) or "max" (Mixed_7c: the FID graph's max pool).
    """

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', not {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception v3 up to its 2048-d global average pool; a frozen measuring instrument.

    Attribute names are the weights file's top-level keys. ``fc`` is never used for features; it is
    there so that the file loads with ``strict=True`` (every key accounted for, none left over).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.weights_sha256: str | None = None  # of the file loaded, set by ``load_fid_inception``
        self.requires_grad_(False)
        self.eval()

    @property
    def is_reference_file(self) -> bool | None:
        """Whether the loaded file's SHA-256 starts as pytorch-fid's file name says (None before loading).

        False means other weights, or the same weights re-saved: FIDs may then differ from published ones.
        """
        return None if self.weights_sha256 is None else self.weights_sha256.startswith(FID_WEIGHTS_SHA256_PREFIX)

    def train(self, mode: bool = True) -> FIDInceptionV3:
        # BatchNorm must always use the file's running statistics; a training-mode switch would
        # silently make features depend on the batch.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input ``(N, 3, 299, 299)`` in [-1, 1] -> pool features ``(N, 2048)`` (float32)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in self.mixed():
            x = block(x)
        return x.mean((2, 3))  # global average pool, as the graph's pool_3

    def mixed(self) -> list[nn.Module]:
        """The eleven Mixed blocks in order (35x35: 5b-5d, 17x17: 6a-6e, 8x8: 7a-7c)."""
        names = ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c")
        return [getattr(self, f"Mixed_{n}") for n in names]

    @staticmethod
    def preprocess(rgb: torch.Tensor) -> torch.Tensor:
        """sRGB ``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, 299, 299)`` in [-1, 1], as pytorch-fid does it."""
        x = F.interpolate(rgb, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
        return 2 * x - 1

    def features(self, rgb: torch.Tensor, batch_size: int = 50) -> torch.Tensor:
        """sRGB ``(N, 3, H, W)`` in [0, 1] -> pool features ``(N, 2048)``, float64 on the CPU.

        Computed in float32 on the weights' device in chunks of ``batch_size``; returned as float64 so
        that the mean and covariance over many photos accumulate without float32 round-off.
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected sRGB of shape (N, 3, H, W), got {tuple(rgb.shape)}")
        if rgb.numel() and (float(rgb.min()) < -1e-3 or float(rgb.max()) > 1 + 1e-3):
            # 0..255 input would run without error and give a meaningless FID.
            raise ValueError(f"expected sRGB in [0, 1], got values in [{float(rgb.min()):g}, {float(rgb.max()):g}]")
        if rgb.shape[0] == 0:
            return torch.zeros(0, FEATURE_DIM, dtype=torch.float64)
        device = self.fc.weight.device
        out = []
        with torch.no_grad():  # not inference_mode: callers may modify the returned tensor in place
            for chunk in rgb.split(batch_size):
                x = self.preprocess(chunk.to(device=device, dtype=torch.float32))
                out.append(self(x).to("cpu", torch.float64))
        return torch.cat(out)


def _first(names: set[str], n: int = 3) -> str:
    shown = sorted(names)[:n]
    return ", ".join(shown) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """The FID Inception v3 with the weights of ``path`` (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``).

    Raises ``ValueError`` (one line, naming the file) for a file that is missing, unreadable, not a
    state_dict, or whose keys or shapes are not those of the FID network. UNVERIFIED against the real
    file: see the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: FID Inception weights file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a bad file raises many types; all mean the same to a caller
        raise ValueError(f"{path}: not a readable PyTorch weights file ({type(e).__name__})") from e
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise ValueError(f"{path}: not a state_dict (a mapping of names to tensors)")

    model = FIDInceptionV3()
    expected = model.state_dict()
    sd = dict(sd)
    # BatchNorm's step counter only matters in training. The pytorch-fid file has these keys (its issue
    # #34 lists them); files saved before torch 0.4.1 lack them, so supply them rather than refuse.
    for k in expected:
        if k.endswith(".num_batches_tracked") and k not in sd:
            sd[k] = expected[k].clone()
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        parts = [f"missing {len(missing)} keys: {_first(missing)}" if missing else ""]
        parts.append(f"unexpected {len(unexpected)} keys: {_first(unexpected)}" if unexpected else "")
        raise ValueError(f"{path}: not the FID Inception weights; " + "; ".join(p for p in parts if p))
    for k, v in expected.items():
        if sd[k].shape != v.shape:
            raise ValueError(
                f"{path}: not the FID Inception weights; {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
            )
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # checked above; kept so that nothing but ValueError escapes
        raise ValueError(f"{path}: could not load FID Inception weights ({str(e).splitlines()[0]})") from e
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    model.weights_sha256 = h.hexdigest()
    return model
