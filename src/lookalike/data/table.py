"""Every data set reduces to one table: image paths, integer labels, query/gallery roles."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
    boxes: np.ndarray | None = None  # optional [N, 4] crop boxes (x, y, width, height) in pixels

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.is_query = np.ones(n, bool) if self.is_query is None else np.asarray(self.is_query, bool)
        self.is_gallery = np.ones(n, bool) if self.is_gallery is None else np.asarray(self.is_gallery, bool)
        if not (len(self.labels) == len(self.is_query) == len(self.is_gallery) == n):
            raise ValueError("paths, labels, is_query and is_gallery must have the same length")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(n, 4)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def is_catalogue(self) -> np.ndarray:
        """Rows that are catalogue pictures (searched for, never searching): where a data set has both, the clean
        pictures as opposed to the photos. Samplers and losses that take ``is_catalogue`` get it
        (:func:`role_arguments`)."""
        return self.is_gallery & ~self.is_query

    @property
    def num_classes(self) -> int:
        return len(np.unique(self.labels))

    def label_names(self) -> list[str]:
        """Each row's class name (its label number when the table has no names)."""
        return [self.class_names[int(y)] if self.class_names else str(int(y)) for y in self.labels]

    def subset(self, mask: np.ndarray) -> ImageTable:
        """Rows where ``mask`` is true."""
        idx = np.flatnonzero(mask)
        return ImageTable(
            [self.paths[i] for i in idx],
            self.labels[idx],
            self.is_query[idx],
            self.is_gallery[idx],
            self.class_names,
            None if self.boxes is None else self.boxes[idx],
        )

    def with_classes(self, classes: Sequence[int]) -> ImageTable:
        """Rows whose label is in ``classes``."""
        return self.subset(np.isin(self.labels, np.asarray(classes)))

    def relabelled(self) -> ImageTable:
        """Same rows with labels mapped to 0..C-1 (what proxy and classification losses need)."""
        classes, labels = np.unique(self.labels, return_inverse=True)
        names = [self.class_names[c] for c in classes] if self.class_names else None
        return ImageTable(self.paths, labels, self.is_query, self.is_gallery, names, self.boxes)

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


def split_classes(table: ImageTable, train_classes: float | int | Sequence[str] = 0.5,
                  test_classes: Sequence[str] | None = None) -> Splits:
    """Split a table into training and test classes, in class-name order (zero-shot protocol).

    ``train_classes`` is a share of the classes (a float < 1), a number of classes (an int), or a
    list of class names; ``test_classes`` defaults to every other class.
    """
    names = table.class_names or [str(c) for c in range(int(table.labels.max()) + 1)]
    present = [names[c] for c in np.unique(table.labels)]
    if isinstance(train_classes, (int, float)) and not isinstance(train_classes, bool):
        n_train = int(train_classes) if train_classes >= 1 else int(round(len(present) * float(train_classes)))
        train_names, rest = present[:n_train], present[n_train:]
    else:
        train_names = [str(n) for n in train_classes]
        rest = [n for n in present if n not in set(train_names)]
    test_names = [str(n) for n in test_classes] if test_classes is not None else rest
    unknown = sorted(set(train_names + test_names) - set(present))
    if unknown:
        raise LookalikeError(f"Classes {unknown[:10]} are not in the data set; it has {present[:20]}"
                             + (" ..." if len(present) > 20 else ""))
    index = {n: i for i, n in enumerate(names)}
    return Splits(train=table.with_classes([index[n] for n in train_names]),
                  test=table.with_classes([index[n] for n in test_names]))


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


ROLES = ("is_catalogue",)  # what a row is, beyond its label, that a sampler or a loss may ask for


def role_arguments(fn: Callable, **roles: Any) -> dict[str, Any]:
    """Those of ``roles`` (each one of :data:`ROLES`) that ``fn`` (a sampler, a loss's ``forward``; a
    ``functools.partial`` too) takes as keyword arguments: one mechanism, so that any class declaring the
    parameter gets the rows' roles and the others nothing."""
    parameters = inspect.signature(getattr(fn, "func", fn)).parameters
    return {name: value for name, value in roles.items() if name in parameters}
