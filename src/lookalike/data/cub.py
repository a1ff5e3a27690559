"""CUB-200-2011 in its published layout, with the standard zero-shot split (classes 1-100 / 101-200)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.data.table import ImageTable, Splits, missing_data, resolve_root

LAYOUT = """  ROOT/images.txt              (<image_id> <relative path>)
  ROOT/image_class_labels.txt  (<image_id> <class_id 1..200>)
  ROOT/images/001.Black_footed_Albatross/....jpg
  (the folder CUB_200_2011/ unpacked from CUB_200_2011.tgz)"""


def _read_pairs(path: Path) -> dict[int, str]:
    with open(path) as f:
        return {int(k): v for k, v in (line.split(maxsplit=1) for line in f if line.strip())}


def cub200(root: str | Path, num_train_classes: int = 100) -> Splits:
    """Classes ``1..num_train_classes`` train, the rest test, each image queries all others."""
    path = resolve_root(root, "CUB-200-2011", LAYOUT)
    for name in ("images.txt", "image_class_labels.txt", "images"):
        if not (path / name).exists():
            raise missing_data(path / name, "CUB-200-2011", LAYOUT)
    images = _read_pairs(path / "images.txt")
    labels = _read_pairs(path / "image_class_labels.txt")
    ids = sorted(images)
    table = ImageTable(
        [str(path / "images" / images[i].strip()) for i in ids],
        np.array([int(labels[i]) - 1 for i in ids]),
    )
    return Splits(
        train=table.subset(table.labels < num_train_classes),
        test=table.subset(table.labels >= num_train_classes),
    )
