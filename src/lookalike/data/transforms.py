"""Albumentations pipelines: training augmentation from config, evaluation from the model's preprocessing.

Pipelines end in uint8 CxHxW tensors: a quarter of float32's bytes between loader processes, pinned
memory and the GPU. The model normalises them on its own device (:func:`normalize_images`)."""

from __future__ import annotations

from typing import Any, Callable

import albumentations as A
import cv2
import torch
from albumentations.pytorch import ToTensorV2

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def interpolation(name: str) -> int:
    """OpenCV flag for a timm interpolation name."""
    return _INTERPOLATION.get(name, cv2.INTER_LINEAR)


def normalize_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, H, W] in 0..255 -> float, normalised with ``mean``/``std`` (given for 0..1 pixel
    values, shaped [1, 3, 1, 1]); memory format kept. Float images are taken as already normalised."""
    if images.dtype != torch.uint8:
        return images
    return (images.to(mean.dtype) - mean * 255) / (std * 255)


def eval_resize(pre: dict[str, Any]) -> int:
    """The short side the evaluation recipe resizes to: size / crop_pct (what images can be decoded at)."""
    return int(round(pre["input_size"][-1] / pre.get("crop_pct", 1.0)))


def eval_transform(pre: dict[str, Any]) -> A.Compose:
    """Resize the short side to :func:`eval_resize` and centre-crop to size (timm's eval recipe); uint8 out."""
    size = pre["input_size"][-1]
    return A.Compose([
        A.SmallestMaxSize(max_size=eval_resize(pre), interpolation=interpolation(pre["interpolation"])),
        A.CenterCrop(height=size, width=size),
        ToTensorV2(),
    ])


def train_transform(augment: Callable | None, pre: dict[str, Any]) -> A.Compose:
    """The configured augmentation (uint8 out); without one, the eval resize and crop."""
    if augment is None:
        return eval_transform(pre)
    return A.Compose([augment, ToTensorV2()])
