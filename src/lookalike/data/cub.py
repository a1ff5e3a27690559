"""CUB-200-2011 in its published layout, with the standard zero-shot split (classes 1-100 / 101-200)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lookalike.data.table import ImageTable, Splits, missing_data, resolve_root

LAYOUT = """  ROOT/images.txt              (<image_id> <relative path>)
  ROOT/image_class_labels.txt  (<image_id> <class_id 1..200>)
  ROOT/bounding_boxes.txt      (<image_id> <x> <y> <width> <height>; for crop_to_box=true)
  ROOT/images/001.Black_footed_Albatross/....jpg
  (the folder CUB_200_2011/ unpacked from CUB_200_2011.tgz; `lookalike download cub200` fetches it)"""


def _read_columns(path: Path) -> dict[int, list[str]]:
    with open(path) as f:
        return {int(p[0]): p[1:] for p in (line.split() for line in f) if p}


def cub200(root: str | Path, num_train_classes: int = 100, crop_to_box: bool = False) -> Splits:
    """Classes ``1..num_train_classes`` train, the rest test; each test image queries all others.

    ``crop_to_box`` crops every image to its annotated bird (``bounding_boxes.txt``).
    """
    path = resolve_root(root, "CUB-200-2011", LAYOUT)
    needed = ["images.txt", "image_class_labels.txt", "images"] + (["bounding_boxes.txt"] if crop_to_box else [])
    for name in needed:
        if not (path / name).exists():
            raise missing_data(path / name, "CUB-200-2011", LAYOUT)
    images = _read_columns(path / "images.txt")
    labels = _read_columns(path / "image_class_labels.txt")
    ids = sorted(images)
    boxes = None
    if crop_to_box:
        box = _read_columns(path / "bounding_boxes.txt")
        boxes = np.array([[float(v) for v in box[i]] for i in ids])
    table = ImageTable(
        [str(path / "images" / images[i][0]) for i in ids],
        np.array([int(labels[i][0]) - 1 for i in ids]),
        class_names=[f"{c:03d}" for c in range(1, 201)],
        boxes=boxes,
    )
    return Splits(train=table.subset(table.labels < num_train_classes),
                  test=table.subset(table.labels >= num_train_classes))
