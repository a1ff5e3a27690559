"""A CSV or parquet manifest for users' own catalogues: ``path,label[,split][,role]``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.data.table import ImageTable, Splits, missing_data, split_classes
from lookalike.errors import LookalikeError

LAYOUT = """  a .csv (or .parquet) file with a header row and the columns
    path    image path, absolute or relative to the manifest's folder
    label   class (any text: product id, SKU, category)
    split   optional: train | val | test (else classes are split by train_classes)
    role    optional: query | gallery | both (test rows; default both = leave-one-out)"""

ROLES = {"query": (True, False), "gallery": (False, True), "both": (True, True), "": (True, True)}


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV or parquet table as dicts of text."""
    if path.suffix.lower() == ".parquet":
        try:
            import pandas as pd
        except ImportError as e:
            raise LookalikeError("Reading a parquet manifest needs pandas and pyarrow: pip install pandas pyarrow") from e
        return pd.read_parquet(path).fillna("").astype(str).to_dict("records")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def manifest(path: str | Path, train_classes: float | int | Sequence[str] = 0.5,
             test_classes: Sequence[str] | None = None) -> Splits:
    """Read a manifest; rows with a ``split`` column go where it says, others are split by class."""
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
    table = ImageTable([str(path.parent / r["path"]) for r in rows], np.array([index[str(r["label"])] for r in rows]),
                       roles[:, 0], roles[:, 1], class_names=names)
    if "split" not in rows[0]:
        return split_classes(table, train_classes, test_classes)
    split = np.array([r["split"].strip().lower() for r in rows])
    unknown = sorted(set(split) - {"train", "val", "test"})
    if unknown:
        raise LookalikeError(f"Manifest '{path}': unknown split value(s) {unknown}; use train, val or test")
    val = table.subset(split == "val")
    return Splits(train=table.subset(split == "train"), test=table.subset(split == "test"),
                  val=val if len(val) else None)
