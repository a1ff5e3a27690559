"""Every data set reduces to one table: image paths, integer labels, query/gallery roles."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lookalike.errors import LookalikeError


@dataclass
class ImageTable:
    """Images of one split.

    ``is_query``/``is_gallery`` give the retrieval protocol: an image that is both queries
    all other images of the table (leave-one-out, the CUB/Cars/SOP protocol); separate roles
    give the query/gallery protocol (In-Shop, photo -> catalogue).
    """

    paths: list[str]
    labels: np.ndarray
    is_query: np.ndarray = field(default=None)  # type: ignore[assignment]
    is_gallery: np.ndarray = field(default=None)  # type: ignore[assignment]
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.is_query = np.ones(n, bool) if self.is_query is None else np.asarray(self.is_query, bool)
        self.is_gallery = np.ones(n, bool) if self.is_gallery is None else np.asarray(self.is_gallery, bool)
        if not (len(self.labels) == len(self.is_query) == len(self.is_gallery) == n):
            raise ValueError("paths, labels, is_query and is_gallery must have the same length")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(np.unique(self.labels))

    def subset(self, mask: np.ndarray) -> ImageTable:
        """Rows where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return ImageTable(
            [self.paths[i] for i in idx],
            self.labels[idx],
            self.is_query[idx],
            self.is_gallery[idx],
            self.class_names,
        )

    def with_classes(self, classes: Sequence[int]) -> ImageTable:
        """Rows whose label is in ``classes``."""
        return self.subset(np.isin(self.labels, np.asarray(classes)))

    def relabelled(self) -> ImageTable:
        """Same rows with labels mapped to 0..C-1 (what proxy and classification losses need)."""
        classes, labels = np.unique(self.labels, return_inverse=True)
        names = [self.class_names[c] for c in classes] if self.class_names else None
        return ImageTable(self.paths, labels, self.is_query, self.is_gallery, names)

    def describe(self) -> str:
        """One line: counts and protocol."""
        protocol = (
            "leave-one-out"
            if self.is_query.all() and self.is_gallery.all()
            else f"{int(self.is_query.sum())} queries / {int(self.is_gallery.sum())} gallery"
        )
        return f"{self.num_classes} classes, {len(self)} images, {protocol}"


@dataclass
class Splits:
    """Class-disjoint training and test tables, and optionally validation classes."""

    train: ImageTable
    test: ImageTable
    val: ImageTable | None = None


def split_off_classes(table: ImageTable, fraction: float | int, seed: int) -> tuple[ImageTable, ImageTable]:
    """Split a table by class: returns (rest, held-out), the held-out classes chosen at random.

    ``fraction`` < 1 is a share of the classes, an int >= 1 a number of classes.
    """
    classes = np.unique(table.labels)
    n_out = int(fraction) if fraction >= 1 else int(round(len(classes) * fraction))
    n_out = max(1, min(n_out, len(classes) - 2))
    held = np.random.default_rng(seed).choice(classes, size=n_out, replace=False)
    mask = np.isin(table.labels, held)
    return table.subset(~mask), table.subset(mask)


def missing_data(path: Path | str | None, name: str, layout: str) -> LookalikeError:
    """The error for a data set that is not where the config says: names the path and the layout."""
    where = f"not found at '{path}'" if path is not None else "needs a location"
    return LookalikeError(f"{name} {where}. Set data.root=/path/to/it; the folder must have this layout:\n{layout}")


def resolve_root(root: str | Path | None, name: str, layout: str) -> Path:
    """The data set root as a Path, or a clear error if it is unset or missing."""
    if root is None or str(root) in ("", "???"):
        raise missing_data(None, name, layout)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise missing_data(path, name, layout)
    return path
