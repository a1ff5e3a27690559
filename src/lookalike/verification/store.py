"""Every catalogue item's local features in item order, as four arrays a backend can keep as they are: ``counts``
(features per item), ``sizes`` (each picture's width and height as its features were found), ``xy`` (uint16,
1/16 pixel) and ``descriptors`` (int8 codes, :mod:`lookalike.verification.codes`), the last two memory-mapped from
a catalogue file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.verification.features import MAX_FEATURES, LocalFeatures

ARRAYS = {"counts": (np.int32, ()), "sizes": (np.uint16, (2,)), "xy": (np.uint16, (2,)),
          "descriptors": (np.int8, ("dims",))}  # name: dtype, shape of a row (dims: the codes')


def layout(dims: int) -> dict[str, tuple[type, tuple[int, ...]]]:
    """Each array's dtype and row shape in a store of codes of ``dims``."""
    return {name: (dtype, tuple(dims if n == "dims" else n for n in shape)) for name, (dtype, shape) in ARRAYS.items()}


@dataclass
class FeatureStore:
    counts: np.ndarray
    sizes: np.ndarray
    xy: np.ndarray
    descriptors: np.ndarray

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])

    @classmethod
    def empty(cls, dims: int) -> FeatureStore:
        return cls(*(np.zeros((0, *shape), dtype) for dtype, shape in layout(dims).values()))

    @property
    def dims(self) -> int:
        return int(self.descriptors.shape[1])

    @classmethod
    def of(cls, features: Sequence[LocalFeatures], dims: int) -> FeatureStore:
        """The store of these pictures' features (their codes of ``dims``), in this order."""
        if not features:
            return cls.empty(dims)
        return cls(np.array([len(f) for f in features], np.int32), np.array([f.size for f in features], np.uint16),
                   np.concatenate([f.fixed_xy() for f in features]),
                   np.concatenate([f.descriptors for f in features]))

    @classmethod
    def checked(cls, arrays: dict[str, np.ndarray], items: int, dims: int, source: str) -> FeatureStore:
        """A store read from a file or a database: every array of its type and shape (codes of ``dims``), counts
        that add up."""
        for name, (dtype, shape) in layout(dims).items():
            array = arrays.get(name)
            if array is None or array.dtype != dtype or array.shape[1:] != shape:
                raise LookalikeError(f"'{source}' holds damaged local features ({name}): build the catalogue again")
        counts = arrays["counts"]
        if len(counts) != items or len(arrays["sizes"]) != items or (len(counts) and (
                counts.min() < 0 or counts.max() > MAX_FEATURES)) or int(counts.sum()) != len(arrays["xy"]) \
                or len(arrays["xy"]) != len(arrays["descriptors"]):
            raise LookalikeError(f"'{source}' holds damaged local features (their counts do not match its "
                                 f"{items} items): build the catalogue again")
        return cls(**{name: arrays[name] for name in ARRAYS})

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, row: int) -> LocalFeatures:
        """The features of the item at this row: the store is a lazy sequence of every item's features."""
        return self.features([row])[0]

    def features(self, rows: Sequence[int]) -> list[LocalFeatures]:
        """The features of the items at these rows (positions in item order)."""
        out = []
        for row in rows:
            start, end = int(self.offsets[row]), int(self.offsets[row + 1])
            out.append(LocalFeatures.stored(np.asarray(self.xy[start:end]), np.asarray(self.descriptors[start:end]),
                                            self.sizes[row]))
        return out

    def appended(self, features: Sequence[LocalFeatures]) -> FeatureStore:
        """This store with more items' features after its own."""
        more = FeatureStore.of(features, self.dims)
        pairs = zip(self.arrays().values(), more.arrays().values())
        return FeatureStore(*(np.concatenate([np.asarray(a), b]) for a, b in pairs))

    def kept(self, keep: np.ndarray) -> FeatureStore:
        """This store with only the items where ``keep`` (a mask in item order) is true."""
        per_feature = np.repeat(keep, self.counts)
        return FeatureStore(self.counts[keep], np.asarray(self.sizes)[keep], np.asarray(self.xy)[per_feature],
                            np.asarray(self.descriptors)[per_feature])

    @property
    def nbytes(self) -> int:
        return sum(int(np.asarray(a).nbytes) for a in self.arrays().values())


def packed_size(count: int, dims: int) -> int:
    """The bytes :func:`packed` makes of ``count`` features with codes of ``dims``."""
    return 4 + count * (4 + dims)


def packed(features: LocalFeatures) -> bytes:
    """One picture's features as bytes: its width and height, each feature's x and y (uint16, 1/16 pixel), then
    their codes (int8); how a database row keeps them."""
    return (np.array(features.size, "<u2").tobytes() + features.fixed_xy().astype("<u2").tobytes()
            + np.ascontiguousarray(features.descriptors, np.int8).tobytes())


def unpacked(data: bytes, dims: int, source: str) -> LocalFeatures:
    """The features of :func:`packed` bytes (codes of ``dims``), their length checked."""
    count, rest = divmod(len(data) - 4, 4 + dims)
    if len(data) < 4 or rest or count > MAX_FEATURES:
        raise LookalikeError(f"'{source}' holds damaged local features (a picture's {len(data)} bytes): build the "
                             "catalogue again")
    size = np.frombuffer(data, "<u2", 2)
    xy = np.frombuffer(data, "<u2", 2 * count, 4).reshape(count, 2)
    codes = np.frombuffer(data, np.int8, count * dims, 4 + 4 * count).reshape(count, dims)
    return LocalFeatures.stored(xy, codes, (int(size[0]), int(size[1])))
