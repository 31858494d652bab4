"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An HxWx3 uint8 'photo' of smooth random colour: compresses well, has no flat areas."""
    img = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 3)
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    return (img * 255).astype(np.uint8)
