import os
import tempfile

import numpy as np
import pytest
import torch

# Two cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))
# Caches (ONNX exports, the CPU runner verdict, TensorRT engines) go to a fresh folder, not the user's.
os.environ["COLORIZE_CACHE_DIR"] = tempfile.mkdtemp(prefix="colorize-test-cache-")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIELAB L of ``rgb (H, W, 3)`` in [0, 1], computed with scikit-image as an independent reference."""
    from skimage.color import rgb2lab

    return rgb2lab(rgb.astype(np.float64))[..., 0]
