"""PK batches that pair each product's catalogue picture with its photos (what a search compares).

PML's ``MPerClassSampler`` draws ``m`` images of each class at random, so a batch may hold a product's photos
without its catalogue picture. This sampler (no library has one) puts, for each of the batch's
``batch_size / m`` classes, one of its catalogue pictures (training rows with the gallery role only) and
``m - 1`` of its other images; a class without a catalogue picture gives ``m`` images. Images are drawn with
replacement where a class has too few. It draws from numpy's global generator, which ``EpochSeededSampler``
seeds for each epoch, so batches are the same whatever the number of loader workers.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from lookalike.errors import LookalikeError


class CatalogueAndPhotosSampler(Sampler[int]):
    """Row indices, ``batch_size`` at a time, ``length_before_new_iter`` (rounded down to whole batches) in all."""

    def __init__(self, labels: np.ndarray, is_catalogue: np.ndarray, m: int, batch_size: int,
                 length_before_new_iter: int):
        labels = np.asarray(labels)
        classes = np.unique(labels)
        if m < 2 or batch_size % m or batch_size // m > len(classes):
            raise LookalikeError(f"Cannot build batches of data.batch_size={batch_size} with sampler.m={m} from "
                                 f"{len(classes)} training classes: m must be at least 2 and divide the batch size, "
                                 f"and the batch can hold at most m x number of classes images")
        catalogue = np.asarray(is_catalogue, dtype=bool)
        self.m, self.batch_size = m, batch_size
        self.classes = classes
        self.catalogue = [np.flatnonzero((labels == c) & catalogue) for c in classes]
        self.others = [np.flatnonzero((labels == c) & ~catalogue) for c in classes]
        self.batches = max(1, length_before_new_iter // batch_size)

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def _group(self, c: int) -> list[int]:
        pictures, others = self.catalogue[c], self.others[c]
        first = [int(np.random.choice(pictures))] if len(pictures) else []
        pool = others if len(others) else pictures
        rest = np.random.choice(pool, self.m - len(first), replace=len(pool) < self.m - len(first))
        return first + [int(i) for i in rest]

    def __iter__(self) -> Iterator[int]:
        for _ in range(self.batches):
            for c in np.random.choice(len(self.classes), self.batch_size // self.m, replace=False):
                yield from self._group(int(c))


class HardPairBatches(Sampler[int]):
    """``sampler``'s row indices with, in each batch of ``batch_size``, the first ``2 m per_batch`` rows replaced
    by ``m`` rows of each class of ``per_batch`` of ``pairs`` (label pairs known to be confused, e.g. from
    feedback), drawn at random: the miner then meets those hard negatives in every batch. PML has no sampler
    taking class pairs."""

    def __init__(self, sampler: Sampler[int], labels: np.ndarray, pairs: list[tuple[int, int]], m: int,
                 batch_size: int, per_batch: int = 1):
        if not pairs or 2 * m * per_batch > batch_size:
            raise LookalikeError(f"Cannot put {per_batch} hard class pair(s) of m={m} images each into batches of "
                                 f"{batch_size}: lower data.feedback_pairs or raise data.batch_size")
        self.sampler, self.pairs, self.batch_size, self.m, self.per_batch = sampler, pairs, batch_size, m, per_batch
        labels = np.asarray(labels)
        self.rows = {int(c): np.flatnonzero(labels == c) for c in {c for pair in pairs for c in pair}}

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        rows = list(self.sampler)
        for start in range(0, len(rows) - self.batch_size + 1, self.batch_size):
            classes = [c for p in np.random.randint(len(self.pairs), size=self.per_batch) for c in self.pairs[p]]
            chosen = [np.random.choice(self.rows[c], self.m, replace=len(self.rows[c]) < self.m) for c in classes]
            rows[start:start + len(classes) * self.m] = [int(i) for group in chosen for i in group]
        return iter(rows)
