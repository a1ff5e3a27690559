"""Verified search: the embedding's candidates and the descriptor votes' candidates, each checked against the photo
by geometric verification; the verified ones first, ordered by their inliers, the others in the embedding's order.

A photo verifies a catalogue picture when at least the catalogue's calibrated threshold of matches agree on one
transformation (:mod:`lookalike.verification.calibration`), so on pictures without texture (fruit, flowers, plain
furniture) nothing verifies and the embedding's order stands."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from lookalike.catalogue.base import Catalogue, SearchHit
from lookalike.catalogue.filters import Condition
from lookalike.errors import LookalikeError
from lookalike.verification.features import LocalFeatures
from lookalike.verification.matching import Verdict, VerifyOptions, verified_order, verify

VERIFY_K = 50  # candidates verified per photo by default: the embedding's best 50 and the votes' best 50
MAX_VERIFY = 1000  # candidates of each source one search may verify (the work of a query stays bounded)


def verify_count(index: Catalogue, asked: int | None) -> int:
    """Candidates to verify: ``asked`` (0: off), or by default ``VERIFY_K`` where the catalogue keeps local
    features and 0 where it does not."""
    if asked is None:
        return VERIFY_K if index.keeps_local else 0
    if asked < 0:
        raise LookalikeError(f"verify={asked}: 0 (off) or a number of candidates to verify")
    if asked:
        index.check_local()
    return asked


def verified_hits(index: Catalogue, hits: list[SearchHit], queries: np.ndarray, photos: Sequence[LocalFeatures],
                  count: int, where: Condition | None, options: VerifyOptions) -> list[SearchHit]:
    """``hits`` (the embedding's candidates, best first) with the ``count`` most voted items of each photo added,
    every one verified against every photo (its best verdict kept) and ordered: verified first by inliers, then
    the rest by embedding similarity to ``queries`` (each item by its best query)."""
    threshold = options.threshold or int(index.check_local()["threshold"])
    known = {h.id for h in hits}
    voted = []
    for photo in photos:
        for item, _ in index.vote_candidates(photo, count, where):
            found = None if item in known else index.item(item)
            if found is not None:  # a vote for an id the catalogue does not hold is no candidate
                known.add(item)
                voted.append(found)
    if voted:
        scores = (np.asarray(queries, np.float32) @ index.vectors_of([it["id"] for it in voted]).T).max(0)
        hits += [SearchHit(it["id"], it["path"], it["label"], float(score), it.get("fields"))
                 for it, score in zip(voted, scores)]
    pictures = index.local_features([h.id for h in hits])
    best = [Verdict() for _ in hits]
    for photo in photos:
        for j, verdict in enumerate(verify(photo, pictures, options, needed=threshold)):
            if verdict.inliers > best[j].inliers:
                best[j] = verdict
    order = verified_order([h.score for h in hits], [v.inliers for v in best], threshold)
    return [replace(hits[i], verified=best[i].inliers >= threshold, inliers=best[i].inliers,
                    quad=best[i].quad if best[i].inliers >= threshold else None) for i in order]
