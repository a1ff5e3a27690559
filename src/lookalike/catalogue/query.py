"""One search of the catalogue as a shop wants it, from query embeddings to the results shown.

In order: several photos of one item are fused into one query (``mean`` of their embeddings, or ``max``: each
item scored by its best photo); alpha query expansion optionally adds the query's nearest catalogue vectors;
the search is restricted to the items a metadata filter keeps (``brand == "acme" and price < 100``), and to the
category, decided (``auto``: a similarity-weighted vote of the nearest items' category) or given, as one more
condition of the filter; the catalogue searches (the FAISS file re-scoring its candidates with exact vectors
where it keeps them, Milvus filtering with its own expressions); results are grouped to one per product
(``group_by``: ``label`` or a manifest column) with how many of its pictures were among the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from lookalike.choices import FUSIONS
from lookalike.errors import LookalikeError
from lookalike.catalogue.filters import Condition, restriction
from lookalike.catalogue.base import Catalogue, SearchHit, hit_value
from lookalike.catalogue.verified import MAX_VERIFY, verified_hits, verify_count
from lookalike.retrieval.expansion import expand
from lookalike.verification.features import LocalFeatures
from lookalike.verification.matching import VerifyOptions

CANDIDATES_PER_GROUP = 4  # candidates searched per requested group before searching wider


@dataclass
class SearchOptions:
    """How to search: ``k`` results; ``fuse`` several photos into one answer (``mean``/``max``; None: each photo
    its own answer); ``group_by`` one result per value of this column; ``category`` a value of ``category_by``
    to search within, or ``auto`` to decide it by the vote of the ``votes`` nearest items (among the items
    ``filter`` keeps: an expression of :mod:`lookalike.catalogue.filters`); ``qe`` > 0: alpha query expansion
    with that many nearest items; ``rerank``: candidates re-scored exactly (None: the index's); ``verify``: this
    many candidates of the embedding and as many of the descriptor votes verified geometrically against the photo
    (None: 50 where the catalogue keeps local features and the photos' are given; 0: off), as ``verification``
    says."""

    k: int = 10
    fuse: str | None = None
    group_by: str | None = None
    category: str | None = None
    category_by: str = "label"
    votes: int = 10
    qe: int = 0
    qe_alpha: float = 3.0
    rerank: int | None = None
    filter: str | None = None
    verify: int | None = None
    verification: VerifyOptions = VerifyOptions()

    def check(self) -> SearchOptions:
        """Refuse options that cannot be searched with, before any embedding work."""
        if self.fuse is not None and self.fuse not in FUSIONS:
            raise LookalikeError(f"fuse={self.fuse!r}: use one of {', '.join(FUSIONS)}")
        if self.votes < 1 or self.qe < 0 or (self.rerank is not None and self.rerank < 0):
            raise LookalikeError("votes must be at least 1, qe and rerank 0 (off) or more")
        if self.verify is not None and not 0 <= self.verify <= MAX_VERIFY:
            raise LookalikeError(f"verify={self.verify}: 0 (off) or up to {MAX_VERIFY} candidates to verify")
        self.verification.check()
        return self


@dataclass
class Answer:
    """The results of one query (one photo, or several fused), and the category searched in."""

    hits: list[SearchHit]
    category: str | None = None
    category_confidence: float | None = None  # share of the vote, for category=auto


def search_catalogue(index: Catalogue, vectors: np.ndarray, options: SearchOptions,
                     photos: Sequence[LocalFeatures] | None = None) -> list[Answer]:
    """Search ``vectors`` (one row per photo; ``photos``: their local features, for verified searches): one answer
    per photo, or one for all with ``options.fuse``."""
    options.check()
    index.check_query(options.k)
    index.check_columns(options.group_by, options.category_by if options.category else None)
    where = restriction(options.filter, index.columns())  # a bad expression is refused before searching
    asked = 0 if options.verify is None and photos is None else options.verify  # no photos: by embedding alone
    options = replace(options, verify=verify_count(index, asked))
    if options.verify and (photos is None or len(photos) != len(vectors) or any(
            p.descriptors.shape[1:] != (int(index.meta["local"]["codes"]["dims"]),) for p in photos)):
        raise LookalikeError("A verified search needs the local features of every photo, found and coded as the "
                             "catalogue's (lookalike.catalogue.local.photo_features(photos, catalogue.meta['local']))")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if options.fuse is None:
        return [_answer(index, vectors[i:i + 1], options, where, photos[i:i + 1] if options.verify else [])
                for i in range(len(vectors))]
    queries = _normalized(vectors.mean(0, keepdims=True)) if options.fuse == "mean" else vectors
    return [_answer(index, queries, options, where, list(photos) if options.verify else [])]


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _answer(index: Catalogue, queries: np.ndarray, options: SearchOptions, where: Condition | None,
            photos: Sequence[LocalFeatures]) -> Answer:
    """One answer for ``queries``: one photo, or several to fuse by their best score per item (``photos``: their
    local features where the search verifies)."""
    if options.qe:
        queries = _expanded(index, queries, options)
    category, confidence = options.category, None
    if where is not None and index.count(where) == 0:
        raise LookalikeError(f"No catalogue item matches the filter {options.filter!r}")
    if category == "auto":
        category, confidence = vote(ranked(index, queries, options.votes, options, where), options.category_by)
    if category is not None:
        where = restriction(options.filter, index.columns(), category, options.category_by)
        if index.count(where) == 0:
            raise LookalikeError(f"No catalogue item has the {options.category_by} {category!r}"
                                 + (" and matches the filter" if options.filter else ""))
    if not options.verify:
        return Answer(ranked(index, queries, options.k, options, where, options.group_by), category, confidence)
    hits = ranked(index, queries, max(options.k, options.verify), options, where)
    hits = verified_hits(index, hits, queries, photos, options.verify, where, options.verification)
    if options.group_by is not None:
        hits = group(hits, options.group_by)
    return Answer(hits[:options.k], category, confidence)


def ranked(index: Catalogue, queries: np.ndarray, k: int, options: SearchOptions, where: Condition | None = None,
           group_by: str | None = None) -> list[SearchHit]:
    """The best ``k`` items (or groups) for all ``queries`` together, each item scored by its best query. Grouped
    searches widen their candidates until they hold ``k`` groups or the whole (allowed) catalogue."""
    available = index.count(where)
    want = k if group_by is None else min(available, max(k * CANDIDATES_PER_GROUP, 50))
    while True:
        hits = _best_per_item(index.search_vectors(queries, want, where, options.rerank))
        if group_by is not None:
            hits = group(hits, group_by)
        if len(hits) >= k or want >= available:
            return hits[:k]
        want = min(available, want * CANDIDATES_PER_GROUP)


def _best_per_item(rows: Sequence[list[SearchHit]]) -> list[SearchHit]:
    """One ranked list from several queries' lists: each item once, with its best score."""
    if len(rows) == 1:
        return rows[0]
    best: dict[int, SearchHit] = {}
    for row in rows:
        for hit in row:
            if hit.id not in best or hit.score > best[hit.id].score:
                best[hit.id] = hit
    return sorted(best.values(), key=lambda h: -h.score)


def group(hits: list[SearchHit], column: str) -> list[SearchHit]:
    """One hit per value of ``column`` (a product's best picture), with ``pictures``: how many of its pictures
    are among ``hits``. An item without a value (a flat folder's pictures have no label) is a product of its own."""
    first: dict[str | int, SearchHit] = {}
    counts: dict[str | int, int] = {}
    for hit in hits:
        key = hit_value(hit, column) or hit.id
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, hit)
    return [replace(hit, group=key if isinstance(key, str) else "", pictures=counts[key])
            for key, hit in first.items()]


def vote(hits: list[SearchHit], column: str) -> tuple[str, float]:
    """The ``column`` value of the nearest items, weighted by similarity, and its share of the vote."""
    weights: dict[str, float] = {}
    for hit in hits:
        value = hit_value(hit, column)
        weights[value] = weights.get(value, 0.0) + max(hit.score, 0.0) + 1e-6
    winner = max(weights, key=weights.__getitem__)
    return winner, weights[winner] / sum(weights.values())


def _expanded(index: Catalogue, queries: np.ndarray, options: SearchOptions) -> np.ndarray:
    """alpha-QE (as ``lookalike.retrieval.expansion``): each query plus its nearest catalogue vectors, weighted by
    similarity**alpha."""
    out = []
    for query in queries:
        hits = index.search_vectors(query[None], options.qe, rerank=options.rerank)[0]
        neighbours = index.vectors_of([h.id for h in hits])
        out.append(expand(torch.from_numpy(query[None]), torch.from_numpy(neighbours[None]),
                          torch.tensor([[h.score for h in hits]]), options.qe_alpha)[0].numpy())
    return np.stack(out)
