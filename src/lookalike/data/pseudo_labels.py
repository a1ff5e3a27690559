"""Pseudo-label files: the ``path,label`` CSV of ``lookalike pseudo-labels`` (each cluster of a catalogue's
embeddings a class), read by ``data=unlabeled`` with ``data.source.pseudo_labels``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

from lookalike.data.listing import read_rows
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write


def write_pseudo_labels(path: str | Path, images: Sequence[str], clusters: Sequence[int]) -> None:
    """Write one ``path,label`` row per image (absolute path, ``clusterNNNNN``), atomically."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["path", "label"])
    writer.writerows((os.path.abspath(image), f"cluster{int(c):05d}") for image, c in zip(images, clusters))
    atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue()))


def read_pseudo_labels(path: str | Path) -> dict[str, str]:
    """Absolute image path -> cluster name, from a CSV written by ``lookalike pseudo-labels``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"Pseudo-label file '{path}' not found: write it with lookalike pseudo-labels")
    rows = read_rows(path)
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise LookalikeError(f"Pseudo-label file '{path}' needs the columns path and label")
    return {os.path.abspath(path.parent / r["path"]): str(r["label"]) for r in rows}
