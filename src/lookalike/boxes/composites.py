"""Photos with a known box, made without hand labels: the training data of the box model.

Each sample is a picture pasted at a random size and place onto a random surface or onto another picture of the
data set (clutter), then put under phone-photo light (albumentations); the pasted region is the box. The object
is the whole picture, or its box where the data set has one (CUB, Cars, a manifest's ``x,y,width,height``);
such pictures also come as themselves, a real photo with its real box, in half of their samples. A share of
samples is a surface with nothing pasted (nothing to find: the model learns a confidence).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lookalike.data.augment import random_background
from lookalike.data.images import load_rgb

def photo_light() -> A.Compose:
    """Phone-photo light, blur, noise and compression (the photometric part of conf/augment/photo.yaml)."""
    return A.Compose([
        A.RandomBrightnessContrast(brightness_limit=(-0.45, 0.15), contrast_limit=(-0.3, 0.2), p=0.8),
        A.RandomGamma(gamma_limit=(70, 150), p=0.5),
        A.PlanckianJitter(temperature_limit=(4000, 9000), p=0.4),
        A.OneOf([A.MotionBlur(blur_limit=(3, 7)), A.Defocus(radius=(1, 3))], p=0.4),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.4),
        A.ImageCompression(quality_range=(40, 90), p=0.5),
    ])


class Composites(Dataset):
    """``length`` samples a pass, made from ``paths`` (with ``boxes``: [N, 4] x, y, width, height in pixels, NaN
    rows for pictures without one) at ``size`` x ``size``: dicts of ``image`` (uint8 3xSxS), ``box`` (x0, y0, x1,
    y1 as fractions of the side) and ``found`` (1, or 0 for an empty surface). The same ``seed`` and epoch give
    the same samples (:meth:`set_epoch`)."""

    def __init__(self, paths: list[str], size: int, length: int, seed: int = 0, boxes: np.ndarray | None = None,
                 empty_share: float = 0.1, scale: tuple[float, float] = (0.3, 0.9)):
        if not paths:
            raise ValueError("Composites need at least one picture")
        self.paths, self.size, self.length, self.seed = list(paths), size, length, seed
        self.boxes = None if boxes is None else np.asarray(boxes, np.float32).reshape(len(paths), 4)
        self.empty_share, self.scale, self.epoch = empty_share, scale, 0
        self.light = photo_light()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _picture(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A picture and its box (x0, y0, x1, y1 in pixels) if the data set gives one."""
        if self.boxes is None or np.isnan(self.boxes[index]).any():
            return load_rgb(self.paths[index], min_side=self.size), None
        x, y, w, h = self.boxes[index]  # in the full image's pixels
        return load_rgb(self.paths[index]), np.array([x, y, x + w, y + h], np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        s = self.size
        if rng.random() < 0.5:
            canvas = random_background(s, s, rng)
        else:
            canvas = cv2.resize(self._picture(int(rng.integers(len(self.paths))))[0], (s, s),
                                interpolation=cv2.INTER_AREA)
        if rng.random() < self.empty_share:
            box, found = np.zeros(4, np.float32), 0.0
        else:
            picture, own = self._picture(int(rng.integers(len(self.paths))))
            if own is not None and rng.random() < 0.5:  # the photo itself, with its real box
                height, width = picture.shape[:2]
                canvas = cv2.resize(picture, (s, s), interpolation=cv2.INTER_AREA)
                box = own / np.array([width, height, width, height], np.float32)
            else:
                if own is not None:
                    x0, y0, x1, y1 = np.round(own).astype(int)
                    picture = picture[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]
                canvas, box = _paste(canvas, picture, rng, self.scale)
            found = 1.0
        self.light.set_random_seed(int(rng.integers(2**31)))
        image = self.light(image=np.ascontiguousarray(canvas))["image"]
        return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                "box": torch.from_numpy(np.clip(box, 0, 1).astype(np.float32)), "found": torch.tensor(found)}


def _paste(canvas: np.ndarray, picture: np.ndarray, rng: np.random.Generator,
           scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``picture`` pasted onto a copy of ``canvas``, its long side a random share of the canvas side; the box
    (x0, y0, x1, y1) as fractions."""
    s = canvas.shape[0]
    height, width = picture.shape[:2]
    factor = rng.uniform(*scale) * s / max(height, width)
    w, h = max(2, min(s, int(round(width * factor)))), max(2, min(s, int(round(height * factor))))
    x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
    out = canvas.copy()
    out[y:y + h, x:x + w] = cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)
    return out, np.array([x, y, x + w, y + h], np.float32) / s
