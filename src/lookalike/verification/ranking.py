"""One photo search's candidates verified and put in order: each candidate's best fit over the photos, the aligned
comparison of the verified ones (:mod:`lookalike.verification.appearance`), their look-alikes, and the verified
order (:func:`~lookalike.verification.matching.verified_order`). Catalogue search and evaluation both rank so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from lookalike.verification.appearance import Aligned, Bounds, placed
from lookalike.verification.features import LocalFeatures
from lookalike.verification.matching import Verdict, VerifyOptions, verified_order, verify

Shown = Callable[[int], "tuple[np.ndarray, float] | None"]  # a candidate's picture for the comparison, by position


@dataclass
class Ranked:
    """Candidates by position: their ``order``, best ``verdicts``, the ``verified`` ones and the look-alikes
    (``rivals``: position -> the position it looks like)."""

    order: list[int]
    verdicts: list[Verdict]
    verified: set[int]
    rivals: dict[int, int]


def rank(photos: Sequence[LocalFeatures], pictures: Sequence[LocalFeatures], scores: Sequence[float], threshold: int,
         shown: Shown, options: VerifyOptions = VerifyOptions(), bounds: Bounds = Bounds()) -> Ranked:
    """Verify ``pictures`` (the candidates, with embedding ``scores``) against every photo, keep each one's best
    verdict, compare the verified ones with the photo they were found in (``shown``: a candidate's picture, None
    where it cannot be had: inliers alone decide for it) and order them."""
    best, seen = [Verdict() for _ in pictures], [0] * len(pictures)
    for n, photo in enumerate(photos):
        for j, verdict in enumerate(verify(photo, pictures, options, needed=threshold)):
            if verdict.inliers > best[j].inliers:
                best[j], seen[j] = verdict, n
    inliers = [v.inliers for v in best]
    found = [j for j in range(len(pictures)) if inliers[j] >= threshold]
    aligned = Aligned({j: seen[j] for j in found}, {j: best[j].quad for j in found}, {j: inliers[j] for j in found},
                      {j: _disagreement(pictures[j], photos[seen[j]], best[j], shown(j), bounds) for j in found})
    rivals = aligned.rivals(bounds)
    order = verified_order(scores, inliers, threshold, aligned, rivals)
    return Ranked(order, best, set(found) - set(rivals), rivals)


def _disagreement(picture: LocalFeatures, photo: LocalFeatures, verdict: Verdict,
                  shown: tuple[np.ndarray, float] | None, bounds: Bounds) -> float | None:
    if photo.pixels is None or verdict.quad is None or shown is None:
        return None
    return placed(shown, picture.size, (photo.pixels, 1.0), photo.size, verdict.quad).disagreement(bounds)
