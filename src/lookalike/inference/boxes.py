"""The box file (``box.pt``, written by ``python train.py experiment=box`` beside its run's files) and crops of
photos to the object it finds: ``--crop auto``.

The file holds the box model's weights, its architecture (timm name, input size), the confidence below which a
photo is searched whole, and provenance (training config, metrics). It is read with ``weights_only`` (plain data,
never code).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from lookalike.data.images import cut
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write
from lookalike.inference.embedder_file import read_payload
from lookalike.models.box import BoxNet

FORMAT = "lookalike-box/1"
BOX_FILE = "box.pt"
MIN_CONFIDENCE = 0.5
MARGIN = 0.05  # of the box's side, added around it: a tight box loses the object's edges


def save_box_file(net: BoxNet, path: str | Path, min_confidence: float = MIN_CONFIDENCE, **provenance: Any) -> Path:
    """Write the box model to ``path`` atomically."""
    payload = {"format": FORMAT, "model": net.config, "min_confidence": float(min_confidence),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "provenance": provenance}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def box_file_for(embedder_path: str | Path) -> Path:
    """Where ``--crop auto`` looks for the box model by default: ``box.pt`` beside the embedder file."""
    return Path(embedder_path).expanduser().parent / BOX_FILE


class BoxFinder:
    """Finds the main object's box in photos and crops them to it (whole photo below ``min_confidence``)."""

    def __init__(self, net: BoxNet, min_confidence: float = MIN_CONFIDENCE):
        self.net, self.min_confidence = net.eval(), min_confidence
        self.size = net.config["image_size"]

    @classmethod
    def load(cls, path: str | Path, min_confidence: float | None = None) -> BoxFinder:
        """The box model of a box file, or one clear message for a missing, corrupt or foreign file."""
        payload = read_payload(path, FORMAT, "box file", "No box model at '{path}': train one with `python train.py "
                               "experiment=box` (it writes box.pt), or pass --boxes FILE, or search with --crop none")
        try:
            net = BoxNet(payload["model"]["backbone"], payload["model"]["image_size"], pretrained=False)
            net.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError, TypeError, LookalikeError) as e:
            raise LookalikeError(f"'{path}' is a damaged box file ({e})") from e
        return cls(net, payload["min_confidence"] if min_confidence is None else min_confidence)

    @torch.no_grad()
    def find(self, images: Sequence[np.ndarray]) -> list[tuple[tuple[float, float, float, float], float]]:
        """Per HxWx3 uint8 image: its object's box (x, y, width, height in its pixels) and the confidence."""
        if not images:
            return []
        batch = torch.from_numpy(np.stack([cv2.resize(im, (self.size, self.size), interpolation=cv2.INTER_AREA)
                                           for im in images])).permute(0, 3, 1, 2).contiguous()
        boxes, logits = self.net(batch)
        out = []
        for image, box, confidence in zip(images, boxes.numpy(), torch.sigmoid(logits).numpy()):
            height, width = image.shape[:2]
            x0, y0, x1, y1 = box * np.array([width, height, width, height])
            out.append(((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), float(confidence)))
        return out

    def crop(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image cut to its object's box (with a margin), or whole where the model is not confident."""
        out = []
        for image, ((x, y, w, h), confidence) in zip(images, self.find(images)):
            if confidence < self.min_confidence or w < 2 or h < 2:
                out.append(image)
                continue
            mx, my = MARGIN * w, MARGIN * h
            x0, y0 = max(0.0, x - mx), max(0.0, y - my)
            out.append(cut(image, (x0, y0, w + 2 * mx, h + 2 * my), "the box found"))
        return out
