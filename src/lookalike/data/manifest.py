"""A CSV or parquet manifest for users' own catalogues: ``path,label[,split][,role]``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.data.images import checked_box, image_size, parse_box
from lookalike.data.listing import read_rows
from lookalike.data.table import ImageTable, Splits, missing_data, split_classes
from lookalike.data.unlabeled import photo_to_catalogue
from lookalike.errors import LookalikeError
from lookalike.files import DEFAULT_CACHE_DIR

LAYOUT = """  a .csv (or .parquet) file with a header row and the columns
    path    image path, absolute or relative to the manifest's folder
    label   class (any text: product id, SKU, category)
    split   optional: train | val | test (else classes are split by train_classes)
    role    optional: query | gallery | both (test rows; default both = leave-one-out)
    x,y,width,height  optional: the product's box in pixels (with crop_to_box=true; empty cells: no box)"""
BOX = ("x", "y", "width", "height")

ROLES = {"query": (True, False), "gallery": (False, True), "both": (True, True), "": (True, True)}


def manifest(path: str | Path, train_classes: float | int | Sequence[str] = 0.5,
             test_classes: Sequence[str] | None = None, val_photos: bool = False, seed: int = 0,
             cache_dir: str | Path = DEFAULT_CACHE_DIR, crop_to_box: bool = False) -> Splits:
    """Read a manifest; rows with a ``split`` column go where it says, others are split by class.
    ``crop_to_box``: images with a box (columns ``x,y,width,height``) are cropped to it.

    ``val_photos``: without validation rows, validate photo -> catalogue on the training pictures themselves,
    each the gallery item of one held-out "photo" of it rendered once into ``cache_dir`` (what a shop with
    only its catalogue can check; :func:`lookalike.data.unlabeled.photo_to_catalogue`)."""
    if path is None or not Path(path).expanduser().is_file():
        raise missing_data(path, "Manifest", LAYOUT)
    path = Path(path).expanduser()
    rows = read_rows(path)
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise LookalikeError(f"Manifest '{path}' needs the columns path and label:\n{LAYOUT}")
    names = sorted({str(r["label"]) for r in rows})
    index = {n: i for i, n in enumerate(names)}
    bad_roles = sorted({r.get("role", "") for r in rows} - set(ROLES))
    if bad_roles:
        raise LookalikeError(f"Manifest '{path}': unknown role(s) {bad_roles}; use query, gallery or both")
    roles = np.array([ROLES[r.get("role", "")] for r in rows], dtype=bool).reshape(-1, 2)
    paths = [str(path.parent / r["path"]) for r in rows]
    table = ImageTable(paths, np.array([index[str(r["label"])] for r in rows]), roles[:, 0], roles[:, 1],
                       class_names=names, boxes=manifest_boxes(path, rows, paths) if crop_to_box else None)
    if "split" not in rows[0]:
        splits = split_classes(table, train_classes, test_classes)
    else:
        split = np.array([r["split"].strip().lower() for r in rows])
        unknown = sorted(set(split) - {"train", "val", "test"})
        if unknown:
            raise LookalikeError(f"Manifest '{path}': unknown split value(s) {unknown}; use train, val or test")
        val = table.subset(split == "val")
        splits = Splits(train=table.subset(split == "train"), test=table.subset(split == "test"),
                        val=val if len(val) else None)
    if val_photos and splits.val is None:
        unique = list(dict.fromkeys(splits.train.paths))
        splits = Splits(train=splits.train, test=splits.test, val=photo_to_catalogue(unique, cache_dir, seed))
    return splits


def manifest_boxes(path: Path, rows: list[dict[str, str]], paths: list[str]) -> np.ndarray:
    """[N, 4] boxes of the manifest's ``x,y,width,height`` columns (NaN for a row without one), each checked
    against its image's size (read from the file's header): a bad box gets one message naming its row."""
    if not set(BOX) <= set(rows[0]):
        raise LookalikeError(f"Manifest '{path}': crop_to_box needs the columns {','.join(BOX)}:\n{LAYOUT}")
    boxes = np.full((len(rows), 4), np.nan, np.float32)
    for line, (row, image) in enumerate(zip(rows, paths), start=2):
        cells = [str(row[c]).strip() for c in BOX]
        if not any(cells):
            continue
        where = f"Manifest '{path}' line {line} ({row['path']})"
        box = parse_box(",".join(cells), f"{where}: the box")
        try:
            width, height = image_size(image)
        except (OSError, ValueError, SyntaxError):  # unreadable: data.on_bad_image decides, with the others
            boxes[line - 2] = box
            continue
        boxes[line - 2] = checked_box(box, width, height, f"{where}: the box")
    return boxes
