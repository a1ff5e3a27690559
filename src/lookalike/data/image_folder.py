"""A generic image folder: one sub-folder per class."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.data.table import ImageTable, Splits, missing_data, resolve_root
from lookalike.errors import LookalikeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

LAYOUT = """  ROOT/<class_a>/<image>.jpg
  ROOT/<class_b>/<image>.png
  ... (one sub-folder per class; classes are split into train and test by name order)"""


def read_image_folder(root: str | Path) -> ImageTable:
    """All images under ``root/<class>/``, labels numbered in sorted class-name order."""
    path = resolve_root(root, "Image folder", LAYOUT)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (path / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise missing_data(f"{path} (no class folders with images)", "Image folder", LAYOUT)
    return ImageTable(paths, np.array(labels), class_names=classes)


def image_folder(
    root: str | Path,
    train_classes: float | Sequence[str] = 0.5,
    test_classes: Sequence[str] | None = None,
) -> Splits:
    """Split an image folder by class (zero-shot protocol).

    ``train_classes`` is either the share of classes (in name order) used for training, the rest
    being test classes, or an explicit list of class-folder names; ``test_classes`` then defaults
    to all other classes.
    """
    table = read_image_folder(root)
    names = table.class_names or []
    if isinstance(train_classes, (int, float)):
        n_train = int(round(len(names) * float(train_classes)))
        train_names, rest = names[:n_train], names[n_train:]
    else:
        train_names, rest = list(train_classes), [n for n in names if n not in set(train_classes)]
    test_names = list(test_classes) if test_classes is not None else rest
    unknown = sorted(set(train_names + test_names) - set(names))
    if unknown:
        raise LookalikeError(f"Classes {unknown} are not sub-folders of {root}; it has {names}")
    index = {n: i for i, n in enumerate(names)}
    return Splits(
        train=table.with_classes([index[n] for n in train_names]),
        test=table.with_classes([index[n] for n in test_names]),
    )
