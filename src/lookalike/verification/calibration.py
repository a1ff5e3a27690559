"""The inliers a verified match needs, calibrated on the catalogue itself.

Photos are made of catalogue pictures (each warped by a random perspective, scaled, turned, dimmed, blurred and
pasted onto another catalogue picture), and each is verified against the candidates the descriptor votes give it,
except its own picture and its background's, and except pictures whose matches with the photo are explained by
content they share with those two (a direct match with at least half as many inliers: copies, crops, edits).
What is left are pairs of *different* pictures, and their inlier counts are what chance reaches in this catalogue
(repeated print, natural texture). The threshold is the smallest count that at most ``rate`` of these wrong pairs
reach, and never below ``FLOOR``. The photos' own pictures give the share of right pairs verified at it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from lookalike.verification.features import FeatureOptions, LocalFeatures, extract
from lookalike.verification.matching import VerifyOptions, verify

FLOOR = 15  # inliers a match needs whatever the calibration finds
RATE = 0.002  # the share of wrong pairs allowed to verify at the threshold
SAMPLE = 200  # photos made (several of each picture in a catalogue of fewer)
SMALLEST = 20  # photos made at least (a catalogue of fewer than 50 pictures: 4 of each, at least this many)
CANDIDATES = 20  # wrong pictures each photo is verified against
COPY = 0.5  # a candidate matching the photo's source pictures directly with at least this share of its inliers with
# the photo shares their content (a re-upload, a crop, an edit): not a wrong pair


@dataclass
class Calibration:
    """The threshold (inliers), the share of wrong pairs that reached it (``false_rate``), the share of made
    photos verified with their own picture (``true_rate``), and how many photos were made."""

    threshold: int
    false_rate: float
    true_rate: float
    photos: int

    def as_meta(self) -> dict:
        return asdict(self)


def made_photo(picture: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``picture`` as a phone might see it, over ``background``: a random perspective, scale and turn, dimmer or
    brighter, blurred, with noise."""
    h, w = picture.shape[:2]
    side = max(h, w)
    canvas = np.full((side, side * 4 // 3, 3), 128, np.uint8) if background is None \
        else cv2.resize(background, (side * 4 // 3, side))
    ch, cw = canvas.shape[:2]
    scale = rng.uniform(0.45, 0.8) * min(ch / h, cw / w)
    angle = np.deg2rad(rng.uniform(-20, 20))
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32) - [w / 2, h / 2]
    placed = corners @ np.array([[c, s], [-s, c]], np.float32).T + [cw / 2, ch / 2]
    placed += rng.uniform(-0.08, 0.08, (4, 2)).astype(np.float32) * [w * scale, h * scale]
    placed += rng.uniform(-0.1, 0.1, 2).astype(np.float32) * [cw, ch]
    H = cv2.getPerspectiveTransform(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32), placed.astype(np.float32))
    warped = cv2.warpPerspective(picture, H, (cw, ch))
    inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), H, (cw, ch)) > 0
    photo = np.where(inside[..., None], warped, canvas).astype(np.float32)
    photo = photo * rng.uniform(0.5, 1.2) + rng.uniform(-20, 20)
    photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.3, 1.2)) + rng.normal(0, 3, photo.shape)
    return photo.clip(0, 255).astype(np.uint8)


def calibrate(ids: Sequence[int], picture: Callable[[int], np.ndarray],
              features: Callable[[Sequence[int]], list[LocalFeatures]],
              candidates: Callable[[LocalFeatures, int], list[tuple[int, int]]], options: FeatureOptions,
              verifying: VerifyOptions = VerifyOptions(), sample: int = SAMPLE, rate: float = RATE,
              seed: int = 0) -> Calibration:
    """Calibrate the threshold on the catalogue items ``ids`` (``picture``: an item's image; ``features``: items'
    stored features; ``candidates``: the items a photo's descriptors vote for, as (id, votes))."""
    rng = np.random.default_rng(seed)
    ids = list(ids)
    sample = min(sample, max(SMALLEST, 4 * len(ids)))
    order = np.concatenate([rng.permutation(len(ids)) for _ in range(-(-sample // max(1, len(ids))))])
    chosen = [ids[i] for i in order[:sample]]  # a small catalogue: several photos of each picture
    wrong, right = [], []
    for item in tqdm(chosen, desc="calibrating verification", unit="photo", leave=False, disable=None):
        others = [i for i in ids if i != item]
        background = int(others[rng.integers(len(others))]) if others else None
        photo = made_photo(picture(item), picture(background) if background is not None else None, rng)
        found = extract(photo, options)
        skip = {item, background}
        voted = [i for i, _ in candidates(found, CANDIDATES + 2) if i not in skip][:CANDIDATES]
        pictures = features([item, *voted])
        verdicts = verify(found, pictures, verifying)
        right.append(verdicts[0].inliers)
        # a picture whose matches with the photo are explained by content it shares with the photo's own picture or
        # its background (the same picture twice, a crop, an edit) is not a wrong pair: wrong pairs are the matches
        # that no shared content explains
        direct = [verify(source, pictures[1:], verifying) for source in [pictures[0], *(
            features([background]) if background is not None else [])]]
        wrong += [v.inliers for j, v in enumerate(verdicts[1:]) if max(d[j].inliers for d in direct) < COPY * v.inliers]
    wrong_counts, right_counts = np.array(wrong), np.array(right)
    allowed = int(np.floor(rate * len(wrong_counts)))
    reached = np.sort(wrong_counts)[::-1]
    threshold = max(FLOOR, int(reached[allowed]) + 1 if allowed < len(reached) else FLOOR)
    return Calibration(threshold, float((wrong_counts >= threshold).mean()) if len(wrong) else 0.0,
                       float((right_counts >= threshold).mean()) if len(right) else 0.0, len(chosen))
