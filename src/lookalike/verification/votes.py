"""Candidates from the local descriptors themselves: every catalogue descriptor in one FAISS index (inverted
lists of 8-bit scalar-quantised RootSIFT, keyed by item id: the vocabulary-tree idea on FAISS), each photo
descriptor voting for the items of its nearest catalogue descriptors. It finds the pictures the embedding ranks
low (clutter, a hand, glare), because a few dozen agreeing descriptors are enough."""

from __future__ import annotations

import math

import numpy as np

from lookalike.retrieval.knn import FaissIndex
from lookalike.verification.features import DESCRIPTOR, LocalFeatures

NEIGHBOURS = 4  # catalogue descriptors each photo descriptor votes through
PER_CELL = 256  # descriptors per inverted list, on average
PROBE = 16  # lists searched per photo descriptor


def vote_factory(descriptors: int) -> str:
    """The index type for this many descriptors: inverted lists of about ``PER_CELL`` each (a power of two, up
    to 65,536 lists), SQ8 codes (128 bytes a descriptor)."""
    cells = 1 << max(0, min(16, int(math.log2(max(1, descriptors // PER_CELL)))))
    return f"IVF{cells},SQ8"


class DescriptorVotes:
    """The catalogue's descriptors in a FAISS index, each under its item's id."""

    def __init__(self, index: FaissIndex):
        self.index = index

    @classmethod
    def build(cls, ids: np.ndarray, features: list[LocalFeatures]) -> DescriptorVotes:
        """A new index trained on these items' descriptors (a sample of at most 256 per list) holding them all."""
        total = sum(len(f) for f in features)
        factory = vote_factory(total)
        votes = cls(FaissIndex(DESCRIPTOR, factory, search_params=f"nprobe={PROBE}"))
        if total:
            descriptors = np.concatenate([f.unit_descriptors() for f in features if len(f)])
            sample = np.random.default_rng(0).permutation(total)[:PER_CELL * int(factory[3:].split(",")[0])]
            votes.index.cpu_index.train(descriptors[np.sort(sample)])
        votes.add(ids, features)
        return votes

    def add(self, ids: np.ndarray, features: list[LocalFeatures]) -> None:
        """Index these items' descriptors (the index is trained)."""
        owners = np.concatenate([np.full(len(f), i, np.int64) for i, f in zip(ids, features)] or [np.zeros(0, np.int64)])
        if len(owners):
            self.index.add(np.concatenate([f.unit_descriptors() for f in features if len(f)]), owners)

    def remove(self, ids: np.ndarray) -> None:
        """Drop these items' descriptors."""
        self.index.remove(np.asarray(ids, np.int64))

    def candidates(self, query: LocalFeatures, top: int, allowed: np.ndarray | None = None) -> list[tuple[int, int]]:
        """The ``top`` items with the most votes of the photo's descriptors, as (item id, votes): each descriptor
        gives one vote to each item among its ``NEIGHBOURS`` nearest catalogue descriptors."""
        if len(query) == 0 or self.index.ntotal == 0 or top < 1:
            return []
        _, owners = self.index.search(query.unit_descriptors(), NEIGHBOURS, allowed=allowed)
        owners = np.sort(owners, axis=1)
        first = np.ones_like(owners, dtype=bool)
        first[:, 1:] = owners[:, 1:] != owners[:, :-1]  # one vote per descriptor and item
        voted = owners[first & (owners >= 0)]
        items, counts = np.unique(voted, return_counts=True)
        order = np.lexsort((items, -counts))[:top]
        return [(int(items[i]), int(counts[i])) for i in order]

    def to_bytes(self) -> bytes:
        return self.index.to_bytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> DescriptorVotes:
        """Rebuild from :meth:`to_bytes` (a damaged blob: one message, from :class:`FaissIndex`)."""
        index = FaissIndex.from_bytes(blob, DESCRIPTOR, "IVF", search_params=f"nprobe={PROBE}")
        return cls(index)
