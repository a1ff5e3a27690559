"""Albumentations pipelines: training augmentation from config, evaluation from the model's preprocessing."""

from __future__ import annotations

from typing import Any, Callable

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def interpolation(name: str) -> int:
    """OpenCV flag for a timm interpolation name."""
    return _INTERPOLATION.get(name, cv2.INTER_LINEAR)


def _normalize(pre: dict[str, Any]) -> list:
    return [A.Normalize(mean=pre["mean"], std=pre["std"], max_pixel_value=255.0), ToTensorV2()]


def eval_transform(pre: dict[str, Any]) -> A.Compose:
    """Resize the short side to size / crop_pct, centre-crop to size, normalise (timm's eval recipe)."""
    size = pre["input_size"][-1]
    resize = int(round(size / pre.get("crop_pct", 1.0)))
    return A.Compose([
        A.SmallestMaxSize(max_size=resize, interpolation=interpolation(pre["interpolation"])),
        A.CenterCrop(height=size, width=size),
        *_normalize(pre),
    ])


def train_transform(augment: Callable | None, pre: dict[str, Any]) -> A.Compose:
    """The configured augmentation followed by normalisation; without one, the eval resize and crop."""
    if augment is None:
        return eval_transform(pre)
    return A.Compose([augment, *_normalize(pre)])
