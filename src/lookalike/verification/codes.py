"""How a catalogue keeps its descriptors: RootSIFT projected on its ``dims`` principal components (the eigenvectors
of their covariance on a sample of the catalogue's own descriptors, numpy's ``eigh``: FAISS's PCA needs more
samples than dimensions) and rounded to int8, ``dims`` bytes a descriptor instead of
128. Photos are projected alike, so votes and matches compare codes with codes; at 32 dimensions the DVD photos
match their covers as with the whole descriptors (``experiments/results/scale.md``)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.files import number_field
from lookalike.verification.features import DESCRIPTOR, LocalFeatures, sampled

SAMPLE = 1 << 16  # descriptors the projection is trained on, at most
SPREAD = 0.999  # the share of projected components that fit int8 without clipping


@dataclass(frozen=True, eq=False)
class DescriptorCodes:
    """The projection of unit RootSIFT descriptors: ``(d - mean) @ matrix.T * scale``, rounded to int8."""

    mean: np.ndarray  # (128,) float32
    matrix: np.ndarray  # (dims, 128) float32
    scale: float

    @property
    def dims(self) -> int:
        return len(self.matrix)

    @classmethod
    def train(cls, features: Sequence[LocalFeatures], dims: int, total: int, seed: int = 0) -> DescriptorCodes:
        """The projection trained on about ``SAMPLE`` of the descriptors of ``features`` (``total`` of them, read
        once, one picture at a time)."""
        sample = sampled(features, SAMPLE, total, DESCRIPTOR, seed)
        if len(sample) < 2:  # no texture anywhere: any projection will do; the first components, unscaled
            return cls(np.zeros(DESCRIPTOR, np.float32), np.eye(dims, DESCRIPTOR, dtype=np.float32), 127.0)
        mean = sample.mean(0)
        centred = sample - mean
        _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending; a whole basis even from a few descriptors
        matrix = np.ascontiguousarray(vectors[:, ::-1][:, :dims].T, np.float32)
        mean = mean.astype(np.float32)
        spread = float(np.quantile(np.abs((sample - mean) @ matrix.T), SPREAD))
        return cls(mean, matrix, 127.0 / max(spread, 1e-6))

    def encode(self, features: LocalFeatures) -> LocalFeatures:
        """These (RootSIFT) features with their descriptors as codes."""
        projected = (features.unit_descriptors() - self.mean) @ self.matrix.T * self.scale
        codes = np.clip(np.round(projected), -127, 127).astype(np.int8).reshape(len(features), self.dims)
        return LocalFeatures(features.xy, codes, features.size, features.pixels)

    def as_meta(self) -> dict[str, Any]:
        return {"dims": self.dims, "scale": self.scale, "mean": _text(self.mean), "matrix": _text(self.matrix)}

    @classmethod
    def of_meta(cls, meta: Any, source: str) -> DescriptorCodes:
        """The projection a catalogue keeps in its meta (numbers only), each part checked."""
        if not isinstance(meta, dict):
            raise LookalikeError(f"'{source}' keeps its local features in an older form (no descriptor codes): "
                                 f"build the catalogue again")
        dims = number_field(meta.get("dims"), "local codes dims", source, 8, DESCRIPTOR, integer=True)
        scale = number_field(meta.get("scale"), "local codes scale", source, 1e-3, 1e6)
        mean, matrix = _array(meta.get("mean"), DESCRIPTOR, source), _array(meta.get("matrix"), dims * DESCRIPTOR,
                                                                             source)
        return cls(mean, matrix.reshape(int(dims), DESCRIPTOR), float(scale))


def _text(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, "<f4").tobytes()).decode()


def _array(text: Any, size: int, source: str) -> np.ndarray:
    try:
        found = np.frombuffer(base64.b64decode(text, validate=True), "<f4") if isinstance(text, str) else None
    except ValueError:
        found = None
    if found is None or len(found) != size or not np.all(np.isfinite(found)):
        raise LookalikeError(f"'{source}' is a damaged lookalike index (its descriptor codes): build it again")
    return found.astype(np.float32)
