"""The embedder: timm backbone + pooling + projection head + L2 normalisation, with its preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lookalike.data.images import load_rgb
from lookalike.data.transforms import eval_resize, eval_transform, normalize_images
from lookalike.models.backbone import create_backbone
from lookalike.models.head import projection_head

ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


def _prepare(image: ImageLike, transform, min_side: int) -> torch.Tensor:
    """One image as the model's input tensor (files decoded at no less than ``min_side``, see load_rgb)."""
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, (str, Path)):
        array = load_rgb(str(image), min_side=min_side)
    elif isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
    return transform(image=array)["image"]


def resolve_preprocessing(model: nn.Module, image_size: int | None) -> dict[str, Any]:
    """timm's data config of ``model`` (size, mean, std, interpolation, crop) as plain data."""
    cfg = timm.data.resolve_model_data_config(model)
    size = image_size or cfg["input_size"][-1]
    return {
        "input_size": [3, size, size],
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "interpolation": cfg["interpolation"],
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


class Embedder(nn.Module):
    """Image -> unit-length embedding. ``config`` rebuilds the architecture; ``preprocessing`` says how
    images must be prepared, so inference needs nothing else."""

    def __init__(self, backbone: dict[str, Any], head: dict[str, Any], image_size: int | None = None):
        super().__init__()
        self.config = {"backbone": dict(backbone), "head": dict(head), "image_size": image_size}
        self.backbone, self.pool = create_backbone(**backbone)
        self.head = projection_head(self.backbone.num_features, **head)
        self.preprocessing = resolve_preprocessing(self.backbone, image_size)
        for name in ("mean", "std"):  # derived from the preprocessing, so not saved in state dicts
            self.register_buffer(name, torch.tensor(self.preprocessing[name]).view(1, 3, 1, 1), persistent=False)

    @property
    def embedding_size(self) -> int:
        return self.config["head"].get("embedding_size") or self.backbone.num_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (before the head) of uint8 images (normalised here, on the model's
        device) or of float images already normalised with ``preprocessing``."""
        return self.pool(self.backbone(normalize_images(images, self.mean, self.std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)), dim=-1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def embed_batch(self, images: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """Unit embeddings (float32, on the CPU) of a batch of preprocessed images [N, 3, H, W], computed on the
        model's device: the one inference path, so catalogue, queries and evaluation embed alike. On a GPU the
        batch goes channels-last and runs under bfloat16 autocast. ``pooled``: the normalised pooled backbone
        features instead (the embedding before the head, the untrained baseline)."""
        device = self.device
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = F.normalize(self.features(images), dim=-1) if pooled else self(images)
        return out.float().cpu()

    def embed(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 64) -> torch.Tensor:
        """Unit embeddings [N, D] (float32, CPU) of image paths, PIL images, HxWx3 uint8 arrays, or
        tensors already preprocessed ([3, H, W] or [N, 3, H, W]: uint8, or float and normalised);
        preprocessing comes from the model."""
        if isinstance(images, torch.Tensor):
            batch = images[None] if images.dim() == 3 else images
            items: list = list(batch)
        else:
            items = list(images) if isinstance(images, (list, tuple)) else [images]
        transform, min_side = eval_transform(self.preprocessing), eval_resize(self.preprocessing)
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, len(items), batch_size):
            chunk = [_prepare(x, transform, min_side) for x in items[start:start + batch_size]]
            out.append(self.embed_batch(torch.stack(chunk)))
        self.train(was_training)
        return torch.cat(out) if out else torch.empty(0, self.embedding_size)
