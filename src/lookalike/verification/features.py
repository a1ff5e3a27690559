"""Local features of a picture: OpenCV's SIFT keypoints with RootSIFT descriptors, the strongest ``count`` of them
found at most ``max_side`` pixels. A catalogue keeps each in ``dims + 4`` bytes: its descriptor's code
(:mod:`lookalike.verification.codes`) and two 16-bit coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from lookalike.errors import LookalikeError

DESCRIPTOR = 128  # bytes of one descriptor: RootSIFT, x 512, rounded to uint8
SCALE = 512.0  # a RootSIFT component (at most 1) times this, clipped to 255: few components exceed 0.5
FIXED = 16.0  # coordinates are kept in 1/16 pixel (uint16: pictures up to 4,096 px at max_side)
MAX_FEATURES = 4096  # the most features per picture a catalogue may claim
MAX_SIDE = 4096
CODE_DIMS = 32  # dimensions of a stored descriptor's code by default (its bytes)


@dataclass(frozen=True)
class FeatureOptions:
    """How local features are found: at most ``count`` per picture (the strongest), in the picture scaled down to
    at most ``max_side`` pixels (never up); a catalogue keeps their descriptors as codes of ``dims`` bytes."""

    count: int = 400
    max_side: int = 640
    dims: int = CODE_DIMS

    def check(self) -> FeatureOptions:
        if not 8 <= self.count <= MAX_FEATURES or not 64 <= self.max_side <= MAX_SIDE or \
                not 8 <= self.dims <= DESCRIPTOR:
            raise LookalikeError(f"local features: count={self.count}, max_side={self.max_side}, dims={self.dims}: "
                                 f"use a count from 8 to {MAX_FEATURES}, a side from 64 to {MAX_SIDE} pixels and "
                                 f"codes of 8 to {DESCRIPTOR} dimensions")
        return self


@dataclass
class LocalFeatures:
    """One picture's features: ``xy`` (n x 2, float32 pixels of the picture as found: scaled to ``max_side``),
    ``descriptors`` (n x 128 uint8, RootSIFT x 512, as found; n x dims int8 as a catalogue keeps them: their
    codes) and ``size`` (width, height of that picture); a photo's
    features also carry that picture (``pixels``, RGB), which verification compares candidates with."""

    xy: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.xy)

    def unit_descriptors(self) -> np.ndarray:
        """The descriptors (or their codes) as float32 unit vectors (cosine = inner product)."""
        d = self.descriptors.astype(np.float32)
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6)

    def fixed_xy(self) -> np.ndarray:
        """The coordinates as stored (uint16, 1/16 pixel)."""
        return np.round(self.xy * FIXED).clip(0, 65535).astype(np.uint16)

    @classmethod
    def stored(cls, xy: np.ndarray, descriptors: np.ndarray, size: Sequence[int]) -> LocalFeatures:
        """Features as a catalogue stores them (``xy`` uint16 in 1/16 pixel)."""
        return cls(xy.astype(np.float32) / FIXED, descriptors, (int(size[0]), int(size[1])))


def sampled(features: Sequence[LocalFeatures], wanted: int, total: int, width: int, seed: int = 0) -> np.ndarray:
    """About ``wanted`` of the ``total`` descriptors of ``features`` (a lazy sequence: each read once), drawn at
    random as unit vectors of ``width``: what an index or a projection is trained on."""
    rng, share = np.random.default_rng(seed), min(1.0, wanted / max(1, total))
    parts = []
    for n in range(len(features)):
        f = features[n]
        if len(f):
            parts.append(f.unit_descriptors()[rng.random(len(f)) < share])
    return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)


NONE = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR), np.uint8), (1, 1))


def scaled(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` scaled down to at most ``max_side`` pixels (never up), as features are found in it."""
    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def extract(image: np.ndarray, options: FeatureOptions = FeatureOptions(), keep: bool = False) -> LocalFeatures:
    """The local features of an RGB (H x W x 3) or gray (H x W) uint8 picture (``keep``: with the picture as they
    were found in, RGB, for the aligned comparison of a photo)."""
    image = scaled(image, options.max_side)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    pixels = (image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)) if keep else None
    keypoints, found = cv2.SIFT_create(nfeatures=options.count).detectAndCompute(gray, None)
    size = (int(gray.shape[1]), int(gray.shape[0]))
    if found is None or not keypoints:
        return LocalFeatures(NONE.xy, NONE.descriptors, size, pixels)
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:options.count]  # SIFT may return ties
    root = np.sqrt(found[order] / np.maximum(found[order].sum(1, keepdims=True), 1e-7))
    xy = np.array([keypoints[i].pt for i in order], np.float32)
    return LocalFeatures(xy, np.round(np.minimum(root * SCALE, 255)).astype(np.uint8), size, pixels)
