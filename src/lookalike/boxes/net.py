"""The box model (the first stage of Deep Ranking / TiefVision): where the main object of a photo is, and how sure.

A light timm backbone (pooled features) and a linear head of five numbers: the box's centre, width and height as
fractions of the side (sigmoids) and a confidence logit that there is an object at all. Trained on
:mod:`lookalike.boxes.composites` with an L1 and a generalised-IoU loss on the boxes (torchvision's) and binary
cross-entropy on the confidence.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, generalized_box_iou_loss

from lookalike.data.transforms import normalize_images
from lookalike.models.backbone import create_backbone


class BoxNet(nn.Module):
    """``forward(images)`` -> (boxes [N, 4] x0, y0, x1, y1 as fractions of the side, confidence logits [N])."""

    def __init__(self, backbone: str = "tf_efficientnet_lite0", image_size: int = 128, pretrained: bool = True):
        super().__init__()
        self.config = {"backbone": backbone, "image_size": image_size}
        self.backbone, _ = create_backbone(backbone, pretrained=pretrained)
        self.head = nn.Linear(self.backbone.num_features, 5)
        data = timm.data.resolve_model_data_config(self.backbone)
        self.register_buffer("mean", torch.tensor(data["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.backbone(normalize_images(images, self.mean, self.std)))
        centre, side = torch.sigmoid(out[:, :2]), torch.sigmoid(out[:, 2:4])
        boxes = torch.cat([centre - side / 2, centre + side / 2], 1).clamp(0, 1)
        return boxes, out[:, 4]


def box_losses(boxes: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, found: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """L1 + generalised IoU on the samples with an object, binary cross-entropy on the confidence."""
    confidence = F.binary_cross_entropy_with_logits(logits, found)
    has = found > 0.5
    if not has.any():
        return {"loss": confidence, "confidence": confidence}
    l1 = F.l1_loss(boxes[has], target[has])
    giou = generalized_box_iou_loss(boxes[has], target[has], reduction="mean")
    return {"loss": l1 + giou + confidence, "l1": l1, "giou": giou, "confidence": confidence}


def mean_iou(boxes: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean IoU of each predicted box with its target box."""
    return box_iou(boxes, target).diagonal().mean() if len(boxes) else torch.tensor(0.0)


class LitBoxNet(L.LightningModule):
    """Trains :class:`BoxNet`; logs ``val/iou`` (mean IoU on the validation composites with an object)."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters({"config": config})
        box = config["box"]
        self.net = BoxNet(box["backbone"], box["image_size"], box.get("pretrained", True))
        self.lr, self.weight_decay = box["lr"], box.get("weight_decay", 1e-4)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = box_losses(*self.net(batch["image"]), batch["box"], batch["found"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=len(batch["image"]))
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        boxes, logits = self.net(batch["image"])
        has = batch["found"] > 0.5
        self.log("val/iou", mean_iou(boxes[has], batch["box"][has]), batch_size=int(has.sum()), prog_bar=True)
        self.log("val/confidence_accuracy", ((logits > 0).float() == batch["found"]).float().mean(),
                 batch_size=len(logits))

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader
        if loader is not None and hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@torch.no_grad()
def evaluate_boxes(net: BoxNet, loader: Any) -> dict[str, float]:
    """On held-out composites: mean IoU, share of boxes with IoU >= 0.5, confidence accuracy (objects and empty
    surfaces), and milliseconds per photo of the model on this machine (batch of 1, after a warm-up)."""
    net.eval()
    ious, hits, images = [], [], None
    for batch in loader:
        boxes, logits = net(batch["image"])
        has = batch["found"] > 0.5
        ious.append(box_iou(boxes[has], batch["box"][has]).diagonal())
        hits.append(((logits > 0).float() == batch["found"]).float())
        images = batch["image"]
    iou, hit = torch.cat(ious), torch.cat(hits)
    one = images[:1]
    net(one)
    started = time.perf_counter()
    for _ in range(20):
        net(one)
    return {"iou": float(iou.mean()), "iou>=0.5": float((iou >= 0.5).float().mean()),
            "confidence_accuracy": float(hit.mean()), "ms_per_photo": (time.perf_counter() - started) / 20 * 1e3,
            "photos": float(len(hit))}
