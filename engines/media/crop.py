"""The one centre crop: training sources, validation images and the realism probe's classifiers all
frame an image the same way."""

import cv2
import numpy as np


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre crop ``(H, W, ...)`` to a square and resize it to ``size`` (area when shrinking, cubic when
    enlarging, so shrinking averages rather than aliases). Any dtype cv2 resizes (uint8, float32)."""
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    image = image[y0 : y0 + s, x0 : x0 + s]
    if s != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_CUBIC)
    return np.ascontiguousarray(image)
