"""Augmentation pieces albumentations lacks: random backgrounds behind catalogue pictures."""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image


def random_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An HxWx3 uint8 surface a product might be photographed on: plain, gradient, mottled, wood, checks."""
    kind = int(rng.integers(5))
    base = rng.integers(0, 256, 3).astype(np.float32)
    if kind == 0:  # plain surface
        arr = np.broadcast_to(base, (height, width, 3))
    elif kind == 1:  # gradient
        t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        arr = np.broadcast_to(base * (1 - t) + rng.integers(0, 256, 3) * t, (height, width, 3))
    elif kind == 2:  # mottled texture (fabric, stone)
        noise = rng.normal(0, 40, (height // 8 + 1, width // 8 + 1, 3)) + 128
        small = Image.fromarray(noise.clip(0, 255).astype(np.uint8))
        arr = base + np.asarray(small.resize((width, height), Image.BICUBIC), np.float32) - 128
    elif kind == 3:  # wood-like stripes
        y = np.arange(height, dtype=np.float32)[:, None]
        stripes = np.sin(y / rng.uniform(2, 8) + rng.normal(0, 0.8, (1, width)).cumsum(1) * 0.05)
        arr = base[None, None, :] * (0.8 + 0.2 * stripes[..., None])
    else:  # checked tablecloth
        cell = int(rng.integers(6, 20))
        yy, xx = np.mgrid[:height, :width]
        check = ((yy // cell + xx // cell) % 2)[..., None].astype(bool)
        arr = np.where(check, base, rng.integers(0, 256, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


class ReplaceBackground(A.ImageOnlyTransform):
    """Put a catalogue picture on a random surface: near-white pixels connected to the border are the
    background (white parts inside the product stay), replaced with a softened edge."""

    def __init__(self, threshold: int = 235, min_fraction: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.threshold = threshold
        self.min_fraction = min_fraction

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        white = (img.min(axis=2) >= self.threshold).astype(np.uint8)
        _, components = cv2.connectedComponents(white, connectivity=4)
        border = np.unique(np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]]))
        mask = np.isin(components, border[border > 0])
        if mask.mean() < self.min_fraction:
            return img  # no white background to replace (a photo already)
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 0)[..., None]
        background = random_background(img.shape[0], img.shape[1], self.random_generator)
        return (img * (1 - alpha) + background * alpha).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("threshold", "min_fraction")
