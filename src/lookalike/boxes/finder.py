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
from tqdm.auto import tqdm

from lookalike.data.images import Box, crop_box, load_rgb
from lookalike.data.table import ImageTable
from lookalike.errors import LookalikeError
from lookalike.files import MAX_INPUT_SIDE, atomic_write, number_field, text_field
from lookalike.embedder.file import read_payload
from lookalike.boxes.net import BoxNet

FORMAT = "lookalike-box/1"
BOX_FILE = "box.pt"
MIN_CONFIDENCE = 0.5
BATCH = 32  # photos decoded and boxed at a time
MARGIN = 0.05  # of the box's side, added around it: a tight box loses the object's edges


def save_box_file(net: BoxNet, path: str | Path, min_confidence: float = MIN_CONFIDENCE, **provenance: Any) -> Path:
    """Write the box model to ``path`` atomically."""
    payload = {"format": FORMAT, "model": net.config, "min_confidence": float(min_confidence),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "provenance": provenance}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def resolve_box_file(given: str | Path | None, embedder_path: str | Path, catalogue_boxes: str | None = None,
                     required: bool = False) -> Path | None:
    """The box model to crop with, the one place this is decided: ``given`` (``--boxes``); else the one the
    catalogue's images were cropped with (``catalogue_boxes``, from ``index build --crop auto``), else ``box.pt``
    beside the embedder file, where it exists; None where none does, unless ``required`` (``--crop auto`` asked for
    one: the path is returned, and loading it says what is missing)."""
    if given:
        return Path(given).expanduser()
    default = Path(catalogue_boxes) if catalogue_boxes else Path(embedder_path).expanduser().parent / BOX_FILE
    return default if required or default.is_file() else None


class BoxFinder:
    """Finds the main object's box in photos and crops them to it (whole photo below ``min_confidence``)."""

    def __init__(self, net: BoxNet, min_confidence: float = MIN_CONFIDENCE, path: str | None = None):
        self.net, self.min_confidence, self.path = net.eval(), min_confidence, path  # path: the box file's
        self.size = net.config["image_size"]

    @classmethod
    def load(cls, path: str | Path, min_confidence: float | None = None) -> BoxFinder:
        """The box model of a box file, or one clear message for a missing, corrupt or foreign file."""
        payload = read_payload(path, FORMAT, "box file", "No box model at '{path}': train one with `python train.py "
                               "experiment=box` (it writes box.pt), or pass --boxes FILE, or search with --crop none")
        model = payload.get("model") if isinstance(payload.get("model"), dict) else {}
        try:
            net = BoxNet(text_field(model.get("backbone"), "backbone", path),
                         number_field(model.get("image_size"), "image size", path, 8, MAX_INPUT_SIDE, integer=True),
                         pretrained=False)
            net.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise LookalikeError(f"'{path}' is a damaged box file ({e})") from e
        stored = number_field(payload.get("min_confidence"), "min_confidence", path, 0, 1)
        return cls(net, stored if min_confidence is None else min_confidence, str(Path(path).expanduser().resolve()))

    @torch.no_grad()
    def find(self, images: Sequence[np.ndarray]) -> list[tuple[Box, float]]:
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

    def search_boxes(self, images: Sequence[np.ndarray]) -> list[Box | None]:
        """Per image, the part of it to search with: its object's box with a margin, clipped to the image, or
        None (the whole image) where the model is not confident."""
        out: list[Box | None] = []
        for image, ((x, y, w, h), confidence) in zip(images, self.find(images)):
            if confidence < self.min_confidence or w < 2 or h < 2:
                out.append(None)
                continue
            height, width = image.shape[:2]
            x0, y0 = max(0.0, x - MARGIN * w), max(0.0, y - MARGIN * h)
            x1, y1 = min(float(width), x + (1 + MARGIN) * w), min(float(height), y + (1 + MARGIN) * h)
            out.append(None if x1 - x0 < 1 or y1 - y0 < 1 else (x0, y0, x1 - x0, y1 - y0))
        return out

    def crop(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image cut to its object's box (with a margin), or whole where the model is not confident."""
        return [image if box is None else crop_box(image, box) for image, box in zip(images, self.search_boxes(images))]

    def boxes_of(self, paths: Sequence[str], batch_size: int = BATCH) -> list[Box | None]:
        """:meth:`search_boxes` of image files, decoded ``batch_size`` at a time with progress; None also for a
        file that cannot be read (the embedding step reports it)."""
        out: list[Box | None] = []
        with tqdm(total=len(paths), desc="finding boxes", unit="img", disable=len(paths) < batch_size) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                images = [_readable(path) for path in chunk]
                found = iter(self.search_boxes([im for im in images if im is not None]))
                out += [None if im is None else next(found) for im in images]
                bar.update(len(chunk))
        return out


def crop_queries(table: ImageTable, finder: BoxFinder) -> tuple[ImageTable, int]:
    """``table`` with each query row cut to the box ``finder`` finds in it (the rows where it finds none keep what
    they had), as ``--crop auto`` searches photos; and how many queries were cut."""
    rows = np.flatnonzero(table.is_query)
    found = finder.boxes_of([table.paths[i] for i in rows])
    boxes = np.full((len(table), 4), np.nan, np.float32) if table.boxes is None else table.boxes.copy()
    for row, box in zip(rows, found):
        if box is not None:
            boxes[row] = box
    cropped = sum(box is not None for box in found)
    return ImageTable(table.paths, table.labels, table.is_query, table.is_gallery, table.class_names, boxes), cropped


def _readable(path: str) -> np.ndarray | None:
    try:
        return load_rgb(path)
    except LookalikeError:
        return None
