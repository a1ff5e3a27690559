"""A generic image folder: one sub-folder per class."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.data.listing import list_image_files
from lookalike.data.table import ImageTable, Splits, missing_data, resolve_root, split_classes

LAYOUT = """  ROOT/<class_a>/<image>.jpg
  ROOT/<class_b>/<image>.png
  ... (one sub-folder per class; classes are split into train and test in name order)"""


def read_image_folder(root: str | Path) -> ImageTable:
    """All images under ``root/<class>/``, labels numbered in sorted class-name order."""
    path = resolve_root(root, "Image folder", LAYOUT)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = list_image_files(path / name)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise missing_data(f"{path} (no class folders with images)", "Image folder", LAYOUT)
    return ImageTable(paths, np.array(labels), class_names=classes)


def image_folder(
    root: str | Path,
    train_classes: float | int | Sequence[str] = 0.5,
    test_classes: Sequence[str] | None = None,
) -> Splits:
    """Split an image folder by class (zero-shot protocol); see :func:`split_classes`."""
    return split_classes(read_image_folder(root), train_classes, test_classes)
