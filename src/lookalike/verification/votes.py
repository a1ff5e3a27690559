"""Candidates from the local descriptors themselves: every catalogue descriptor in one FAISS index (inverted
lists of its codes, 8-bit scalar-quantised, keyed by item id: the vocabulary-tree idea on FAISS), each photo
descriptor voting for the items of its nearest catalogue descriptors. It finds the pictures the embedding ranks
low (clutter, a hand, glare), because a few dozen agreeing descriptors are enough."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from lookalike.errors import LookalikeError
from lookalike.retrieval.knn import FaissIndex, faiss_module, ivf_cells
from lookalike.verification.features import LocalFeatures, sampled

NEIGHBOURS = 4  # catalogue descriptors each photo descriptor votes through
RATIO = 0.8  # a neighbour votes when it is this much nearer than the next after the voting ones
PER_CELL = 512  # descriptors per inverted list, on average
MAX_CELLS = 1 << 16  # lists at most
HNSW_FROM = 1 << 13  # from this many lists on, the lists' centroids are found through an HNSW graph, not scanned
TRAIN_PER_CELL = 32  # training descriptors per list
PROBE = 16  # lists searched per photo descriptor
OUTGROWN = 4  # an index holding this many times the descriptors its lists were trained for is trained anew


def vote_lists(descriptors: int) -> int:
    """Inverted lists for this many descriptors: about ``PER_CELL`` each, a power of two, at most ``MAX_CELLS``."""
    return 1 << max(0, min(int(math.log2(MAX_CELLS)), int(math.log2(max(1, descriptors // PER_CELL)))))


def outgrown(descriptors: int, lists: int) -> bool:
    """Whether an index of ``lists`` trained lists holding this many descriptors has outgrown them: ``OUTGROWN``
    times what they were trained for, where more lists would serve them (its lists grow long: every search scans
    more)."""
    return descriptors > OUTGROWN * PER_CELL * lists and lists < MAX_CELLS


def vote_factory(descriptors: int) -> str:
    """The index type for this many descriptors: :func:`vote_lists` inverted lists, their centroids in an HNSW
    graph from ``HNSW_FROM`` lists on; SQ8 codes (a byte a dimension of the descriptors' codes)."""
    cells = vote_lists(descriptors)
    quantizer = f"IVF{cells}_HNSW32" if cells >= HNSW_FROM else f"IVF{cells}"
    return f"{quantizer},SQ8"


def search_params(lists: int) -> str:
    """How an index of this many lists is searched: ``PROBE`` lists a descriptor, found through the HNSW graph
    with a candidate list a few times as long where there is one."""
    return f"nprobe={PROBE}" + (f",quantizer_efSearch={4 * PROBE}" if lists >= HNSW_FROM else "")


class DescriptorVotes:
    """The catalogue's descriptors (their codes, as unit vectors) in a FAISS index, each under its item's id."""

    def __init__(self, index: FaissIndex):
        self.index = index

    @classmethod
    def new(cls, factory: str, dims: int) -> DescriptorVotes:
        """An empty, untrained index of this type (:func:`vote_factory`) for codes of ``dims``."""
        return cls(FaissIndex(dims, factory, search_params=search_params(ivf_cells(factory))))

    @property
    def lists(self) -> int:
        return int(self._ivf().nlist)

    def _ivf(self):
        return faiss_module().extract_index_ivf(self.index.cpu_index)

    def train(self, sample: np.ndarray) -> None:
        """Train the lists (k-means; an HNSW graph finds each sample's nearest centroid from ``HNSW_FROM`` lists on,
        FAISS's way of clustering into tens of thousands of lists on a CPU) and the codes on these unit
        descriptors."""
        faiss, ivf = faiss_module(), self._ivf()
        ivf.cp.min_points_per_centroid = 1  # a small catalogue's few descriptors train its one or few lists
        if ivf.nlist >= HNSW_FROM:
            ivf.clustering_index = faiss.IndexHNSWFlat(ivf.d, 32)
        ivf.train(np.ascontiguousarray(sample, np.float32))

    @classmethod
    def build(cls, ids: np.ndarray, features: Sequence[LocalFeatures], dims: int) -> DescriptorVotes:
        """A new index of codes of ``dims``, trained on a sample of these items' descriptors (``TRAIN_PER_CELL`` a
        list, at least 65,536), holding them all. ``features`` may be a lazy sequence (a catalogue's stored
        features): each item is read once to count, once for the sample and once to be added, never all at a
        time."""
        total = sum(len(features[n]) for n in range(len(features)))
        votes = cls.new(vote_factory(total), dims)
        if total:
            votes.train(sampled(features, max(TRAIN_PER_CELL * votes.lists, 1 << 16), total, dims))
        votes.add(ids, features)
        return votes

    def outgrown(self) -> bool:
        """Whether the index has outgrown its lists (:func:`outgrown`)."""
        return outgrown(self.index.ntotal, self.lists)

    def add(self, ids: np.ndarray, features: Sequence[LocalFeatures], chunk: int = 4096) -> None:
        """Index these items' descriptors (the index is trained), ``chunk`` items at a time, with progress where
        there are several chunks."""
        with tqdm(total=len(features), desc="indexing descriptors", unit="picture", leave=False,
                  disable=None if len(features) > chunk else True) as bar:
            for start in range(0, len(features), chunk):
                end = min(start + chunk, len(features))
                part = [(int(ids[n]), features[n]) for n in range(start, end)]
                part = [(i, f) for i, f in part if len(f)]
                if part:
                    self.index.add(np.concatenate([f.unit_descriptors() for _, f in part]),
                                   np.concatenate([np.full(len(f), i, np.int64) for i, f in part]))
                bar.update(end - start)

    def remove(self, ids: np.ndarray) -> None:
        """Drop these items' descriptors."""
        self.index.remove(np.asarray(ids, np.int64))

    def candidates(self, query: LocalFeatures, top: int, allowed: np.ndarray | None = None) -> list[tuple[int, int]]:
        """The ``top`` items with the most votes of the photo's descriptors, as (item id, votes): each descriptor
        gives one vote to each item among its ``NEIGHBOURS`` nearest catalogue descriptors that is clearly nearer
        than the next one (Lowe's ratio test, against the ``NEIGHBOURS + 1``-th: common patterns vote for no one)."""
        if len(query) == 0 or self.index.ntotal == 0 or top < 1:
            return []
        sims, owners = self.index.search(query.unit_descriptors(), NEIGHBOURS + 1, allowed=allowed)
        return tally(sims, owners, top)

    def owners(self, lists: int) -> np.ndarray:
        """The item ids of the descriptors held in ``lists`` inverted lists spread evenly over the index, list by
        list: what a loaded index is checked against without reading it all."""
        faiss, invlists = faiss_module(), self._ivf().invlists
        chosen = np.unique(np.linspace(0, invlists.nlist - 1, min(lists, invlists.nlist)).astype(np.int64))
        found = [faiss.rev_swig_ptr(invlists.get_ids(int(i)), invlists.list_size(int(i))).copy()
                 for i in chosen if invlists.list_size(int(i))]
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    def to_bytes(self) -> bytes:
        return self.index.to_bytes()

    def write(self, out: Callable[[bytes], Any]) -> None:
        """What :meth:`to_bytes` gives, a piece at a time."""
        self.index.write(out)

    @classmethod
    def from_bytes(cls, blob: bytes | np.ndarray, dims: int, mapped: bool = False) -> DescriptorVotes:
        """Rebuild from :meth:`to_bytes` an index of codes of ``dims`` (``mapped``: read in place from a memory map,
        see :meth:`FaissIndex.from_bytes`; a damaged blob: one message)."""
        found = cls(FaissIndex.from_bytes(blob, dims, "IVF", mapped=mapped))
        try:
            lists = found.lists
        except RuntimeError as e:
            raise LookalikeError("its vote index is no FAISS inverted-file index") from e
        found.index.set_search_params(search_params(lists))
        return found


def tally(sims: np.ndarray, owners: np.ndarray, top: int) -> list[tuple[int, int]]:
    """The votes of photo descriptors, from the similarities and item ids (-1: none) of each one's
    ``NEIGHBOURS + 1`` nearest catalogue descriptors: the ``top`` items with most votes, as (item id, votes)."""
    dist = np.sqrt(np.clip(2 - 2 * sims, 0, None))
    background = np.where(owners[:, -1:] >= 0, dist[:, -1:], np.inf)
    owners = np.where((dist[:, :-1] < RATIO * background) & (owners[:, :-1] >= 0), owners[:, :-1], -1)
    owners = np.sort(owners, axis=1)
    first = np.ones_like(owners, dtype=bool)
    first[:, 1:] = owners[:, 1:] != owners[:, :-1]  # one vote per descriptor and item
    items, counts = np.unique(owners[first & (owners >= 0)], return_counts=True)
    order = np.lexsort((items, -counts))[:top]
    return [(int(items[i]), int(counts[i])) for i in order]
