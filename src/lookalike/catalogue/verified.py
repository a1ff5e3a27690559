"""Verified search: the embedding's candidates and the descriptor votes' candidates, each checked against the photo
by geometric verification; the verified ones first, ordered by their inliers, the others in the embedding's order.

A photo verifies a catalogue picture when at least the catalogue's calibrated threshold of matches agree on one
transformation (:mod:`lookalike.verification.calibration`), so on pictures without texture (fruit, flowers, plain
furniture) nothing verifies and the embedding's order stands. Each verified picture is then compared with the
photo where the fit puts it (:mod:`lookalike.verification.appearance`): of the candidates found over the same part
of a photo, the one whose colours and print agree best comes first, and one that disagrees beyond the catalogue's
calibrated bound is a look-alike of it (a sibling: another variant of the product), not a second verified match."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from lookalike.catalogue.base import Catalogue, SearchHit
from lookalike.catalogue.filters import Condition
from lookalike.catalogue.local import comparison_picture
from lookalike.errors import LookalikeError
from lookalike.verification.appearance import Bounds
from lookalike.verification.features import LocalFeatures
from lookalike.verification.matching import VerifyOptions
from lookalike.verification.ranking import rank

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
    every one verified against every photo (its best verdict kept), compared with the photo where it verified,
    and ordered (:func:`~lookalike.verification.ranking.rank`): verified first, look-alikes after the one they look
    like, then the rest by embedding similarity to ``queries`` (each item by its best query)."""
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
    bounds = Bounds.of(index.meta["local"].get("appearance"))
    ranked = rank(photos, pictures, [h.score for h in hits], threshold,
                  lambda j: comparison_picture(hits[j].path, pictures[j].size), options, bounds)
    return [replace(hits[i], verified=i in ranked.verified, inliers=ranked.verdicts[i].inliers,
                    quad=ranked.verdicts[i].quad if i in ranked.verified or i in ranked.rivals else None,
                    lookalike_of=hits[ranked.rivals[i]].id if i in ranked.rivals else None) for i in ranked.order]
