"""Geometric verification of candidates: a photo's local features against each candidate picture's.

All candidates at once: one matrix product of the photo's descriptors with every candidate's (on the GPU where
there is one), the two nearest of each candidate per photo descriptor, Lowe's ratio test; then for each candidate
with enough matches, OpenCV's robust homography fit (USAC MAGSAC++; an affine fit where the homography folds the
picture), its inliers and the picture's outline where it was found in the photo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from lookalike.errors import LookalikeError
from lookalike.verification.appearance import Aligned, rounded
from lookalike.verification.features import LocalFeatures

MIN_FIT = 8  # matches needed to try a fit at all
MAX_PAIRS = 1 << 26  # photo x candidate descriptor similarities computed at once (256 MB of float32)


@dataclass(frozen=True)
class VerifyOptions:
    """How candidates are verified: Lowe's ``ratio`` test, the fit's reprojection error in ``pixels`` (of the
    pictures as their features were found), and the inliers a verified candidate needs (``threshold``; None: the
    one calibrated with the catalogue)."""

    ratio: float = 0.75  # Lowe's 0.8 was for whole SIFT: on 32-byte codes it passes twice the wrong matches; 0.75
    # as many as 0.8 did on SIFT, the DVD photos' covers found as well (experiments/results/scale.md, "Descriptor bytes")
    pixels: float = 6.0
    threshold: int | None = None

    def check(self) -> VerifyOptions:
        if not 0 < self.ratio < 1 or not 0 < self.pixels <= 100 or (self.threshold is not None and self.threshold < 4):
            raise LookalikeError(f"verification: ratio={self.ratio} (0-1), pixels={self.pixels} (0-100) and a "
                                 f"threshold of at least 4 inliers ({self.threshold})")
        return self


@dataclass
class Verdict:
    """One candidate checked against a photo: ``matches`` passing the ratio test, ``inliers`` of the fit, and
    ``quad``: the candidate picture's corners (top-left, top-right, bottom-right, bottom-left) where it was found in
    the photo, as fractions of the photo's width and height, or None without a fit."""

    matches: int = 0
    inliers: int = 0
    quad: list[list[float]] | None = None

    @property
    def inlier_ratio(self) -> float:
        return self.inliers / self.matches if self.matches else 0.0


def device() -> torch.device:
    """Where the descriptor products run."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ratio_matches(query: LocalFeatures, candidates: Sequence[LocalFeatures], ratio: float
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each candidate: (photo feature rows, candidate feature rows) of the matches passing the ratio test."""
    found: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64),) * 2 for _ in candidates]
    if len(query) == 0 or not candidates:
        return found
    width = max(len(c) for c in candidates)
    if width < 2:
        return found
    at = device()
    q = torch.from_numpy(query.unit_descriptors()).to(at)
    per_batch = max(1, MAX_PAIRS // (len(query) * width))
    for start in range(0, len(candidates), per_batch):
        group = candidates[start:start + per_batch]
        stacked = np.zeros((len(group), width, q.shape[1]), np.float32)  # padding scores 0: never a nearest match
        for j, c in enumerate(group):
            stacked[j, :len(c)] = c.unit_descriptors()
        sims = (q @ torch.from_numpy(stacked.reshape(-1, q.shape[1])).to(at).T).view(len(q), len(group), width)
        best, rows = sims.topk(2, dim=2)  # photo descriptor x candidate: the two nearest of its descriptors
        dist = torch.sqrt(torch.clamp(2 - 2 * best, min=0))
        passed = (dist[..., 0] < ratio * dist[..., 1]).T.cpu().numpy()
        rows = rows[..., 0].T.cpu().numpy()
        for j, c in enumerate(group):
            ok = passed[j] & (rows[j] < len(c))
            found[start + j] = (np.flatnonzero(ok), rows[j][ok])
    return found


def verify(query: LocalFeatures, candidates: Sequence[LocalFeatures], options: VerifyOptions = VerifyOptions(),
           needed: int = MIN_FIT) -> list[Verdict]:
    """Each candidate picture checked against the photo ``query``; candidates with fewer than ``needed`` ratio-test
    matches get no fit (they cannot reach that many inliers)."""
    verdicts = []
    for candidate, (q_rows, c_rows) in zip(candidates, ratio_matches(query, candidates, options.ratio)):
        verdict = Verdict(matches=len(q_rows))
        if len(q_rows) >= max(needed, MIN_FIT):
            verdict = fit(candidate.xy[c_rows], query.xy[q_rows], candidate.size, options.pixels)
            if verdict.quad is not None:
                verdict.quad = [[round(x / query.size[0], 4), round(y / query.size[1], 4)] for x, y in verdict.quad]
        verdicts.append(verdict)
    return verdicts


def fit(source: np.ndarray, target: np.ndarray, size: tuple[int, int], pixels: float) -> Verdict:
    """The robust fit of matched points ``source`` (candidate picture of ``size``) -> ``target`` (photo): a
    homography, or an affine map where the homography folds the picture's outline."""
    src, dst = np.ascontiguousarray(source, np.float32), np.ascontiguousarray(target, np.float32)
    w, h = size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32).reshape(-1, 1, 2)
    H, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, pixels, maxIters=2000, confidence=0.999)
    if H is not None and mask is not None:
        quad = cv2.perspectiveTransform(corners, H).reshape(4, 2)
        if _plausible(quad):
            return Verdict(len(src), int(mask.sum()), quad.tolist())
    A, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=pixels, maxIters=2000)
    if A is None or mask is None:
        return Verdict(len(src))
    quad = cv2.transform(corners, A).reshape(4, 2)
    if not _plausible(quad):
        return Verdict(len(src))
    return Verdict(len(src), int(mask.sum()), quad.tolist())


def _plausible(quad: np.ndarray) -> bool:
    """A picture seen in a photo: its outline convex (not folded or twisted) and not shrunk to a point."""
    if not np.all(np.isfinite(quad)):
        return False
    edges = np.roll(quad, -1, axis=0) - quad
    turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    area = 0.5 * abs(float(np.dot(quad[:, 0], np.roll(quad[:, 1], -1)) - np.dot(quad[:, 1], np.roll(quad[:, 0], -1))))
    return bool((np.all(turns > 0) or np.all(turns < 0)) and area >= 64)


def verified_order(scores: Sequence[float], inliers: Sequence[int], threshold: int, aligned: Aligned | None = None,
                   rivals: dict[int, int] | None = None) -> list[int]:
    """Positions of candidates in their verified order: those with at least ``threshold`` inliers first, most inliers
    first, then the others by embedding ``scores``, best first. With the aligned comparison (``aligned``), candidates
    found over the same part of a photo are ordered by their standing (the cells that disagree with it and the inliers
    they lack), then by inliers, and each look-alike (``rivals``: position -> the position it looks like) follows the
    candidate it looks like, no longer verified."""
    positions = range(len(scores))
    rivals = rivals or {}
    verified = sorted((i for i in positions if inliers[i] >= threshold and i not in rivals),
                      key=lambda i: (-inliers[i], -scores[i]))
    if aligned is not None:
        place = aligned.places(verified)
        most: dict[int, int] = {}
        for i in verified:
            most[place[i]] = max(most.get(place[i], 0), inliers[i])
        verified.sort(key=lambda i: (-most[place[i]], place[i], rounded(aligned.standing(i)),
                                     -inliers[i], -scores[i]))
    following: dict[int, list[int]] = {}
    for i, like in rivals.items():
        following.setdefault(like, []).append(i)
    ordered = []
    for i in verified:
        ordered += [i, *sorted(following.get(i, []), key=lambda r: (rounded(aligned.standing(r) if aligned
                                                                                    else None), -inliers[r]))]
    rest = sorted((i for i in positions if inliers[i] < threshold and i not in rivals), key=lambda i: -scores[i])
    return ordered + rest
