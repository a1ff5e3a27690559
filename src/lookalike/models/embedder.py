"""The embedder: timm backbone + pooling + projection head + L2 normalisation, with its preprocessing."""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from lookalike.models.backbone import create_backbone
from lookalike.models.head import projection_head


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

    @property
    def embedding_size(self) -> int:
        return self.config["head"].get("embedding_size") or self.backbone.num_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (before the head)."""
        return self.pool(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)), dim=-1)

