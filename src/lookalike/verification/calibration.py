"""What a verified match needs, calibrated on the catalogue itself: the inliers, and the bounds of the aligned
comparison (:mod:`lookalike.verification.appearance`).

Photos are made of catalogue pictures (each warped by a random perspective, scaled, turned, its white balance and
exposure shifted, blurred and pasted onto another catalogue picture), and each is verified against its own picture
and the candidates the descriptor votes give it. The photo against its own picture gives the cells of right pairs: a
cell disagrees beyond the 99th percentile of their lightness and chroma differences. Copies made of catalogue pictures
(re-encoded, resized, cropped) against their own give the ``copy`` bound (the share of cells that may differ between one
picture's copies); a copy put beside its picture in a photo gives the ``margin`` by which a candidate must stand worse
than the best (disagree more, lack more inliers) to be a look-alike. The other candidates are wrong pairs, siblings of
the photo's own picture included, except what the search would not show as a wrong verified match: true copies of the
photo's picture (they match it and agree with it after alignment), look-alikes the comparison sets apart, and pictures
sharing print with the background (another product the photo shows). The threshold is the smallest count of inliers that
at most ``rate`` of the chance pairs among them reach (those sharing no print with the photo's pictures: no count of
inliers tells a sibling from its product, they share the print; the comparison does), never below ``FLOOR``; the rate
reported is that of all the wrong pairs at it, siblings included: what users see. The photos' own pictures give the
share of right pairs verified at it, and the wrong pairs that verify the median disagreement of siblings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from lookalike.verification.appearance import OVERLAP, Bounds, Cells, overlap, placed, shrunk, standing
from lookalike.verification.codes import DescriptorCodes
from lookalike.verification.features import FeatureOptions, LocalFeatures, extract, scaled
from lookalike.verification.matching import Verdict, VerifyOptions, verify

FLOOR = 15  # inliers a match needs whatever the calibration finds
RATE = 0.002  # the share of wrong pairs allowed to verify at the threshold
SAMPLE = 200  # photos made (several of each picture in a catalogue of fewer)
SMALLEST = 20  # photos made at least (a catalogue of fewer than 50 pictures: 4 of each, at least this many)
CANDIDATES = 20  # wrong pictures each photo is verified against
COPIES = 60  # copies made of catalogue pictures, at most
SMALLEST_COPY = 2 / 64  # the copy bound at least: two cells of the 8 x 8 may differ
SMALLEST_MARGIN = 0.1  # the margin at least (in cell bounds)


@dataclass
class Calibration:
    """The threshold (inliers), the share of wrong pairs that reached it (``false_rate``: siblings included), the
    share of made photos verified with their own picture (``true_rate``), how many photos were made, the aligned
    comparison's bounds (``appearance``) and the median disagreement of the wrong pairs that verified
    (``sibling_disagreement``: None where none did)."""

    threshold: int
    false_rate: float
    true_rate: float
    photos: int
    appearance: dict
    sibling_disagreement: float | None = None

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
    photo = photo * rng.uniform(0.5, 1.2) * rng.uniform(0.85, 1.15, 3) + rng.uniform(-20, 20)  # exposure, white
    photo = cv2.GaussianBlur(photo, (0, 0), rng.uniform(0.3, 1.2)) + rng.normal(0, 3, photo.shape)
    return photo.clip(0, 255).astype(np.uint8)


def made_copy(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``picture`` as a shop might upload it again: re-encoded, resized or cropped."""
    h, w = picture.shape[:2]
    kind = int(rng.integers(3))
    if kind == 0:
        _, data = cv2.imencode(".jpg", picture[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 70))])
        return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    if kind == 1:
        scale = rng.uniform(0.4, 0.8)
        return cv2.resize(picture, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    dx, dy = (int(v) for v in rng.uniform(0.03, 0.12, 2) * [w, h])
    return picture[dy:h - dy, dx:w - dx].copy()


def calibrate(ids: Sequence[int], picture: Callable[[int], np.ndarray],
              features: Callable[[Sequence[int]], list[LocalFeatures]],
              candidates: Callable[[LocalFeatures, int], list[tuple[int, int]]], options: FeatureOptions,
              codes: DescriptorCodes, verifying: VerifyOptions = VerifyOptions(), sample: int = SAMPLE,
              rate: float = RATE,
              seed: int = 0) -> Calibration:
    """Calibrate the threshold and the comparison's bounds on the catalogue items ``ids`` (``picture``: an item's
    image; ``features``: items' stored features; ``candidates``: the items a photo's descriptors vote for, as (id,
    votes); ``codes``: how the catalogue keeps descriptors, the photos' coded alike)."""
    rng = np.random.default_rng(seed)
    ids = list(ids)
    sample = min(sample, max(SMALLEST, 4 * len(ids)))
    order = np.concatenate([rng.permutation(len(ids)) for _ in range(-(-sample // max(1, len(ids))))])
    chosen = [ids[i] for i in order[:sample]]  # a small catalogue: several photos of each picture
    kept: dict[int, tuple[np.ndarray, float]] = {}

    def small(item: int, size: tuple[int, int]) -> tuple[np.ndarray, float]:
        if item not in kept:
            kept[item] = shrunk(scaled(picture(item), options.max_side), size)
        return kept[item]

    right, right_cells, copies, wrong, spread_cells = [], [], [], [], []
    for n, item in enumerate(tqdm(chosen, desc="calibrating verification", unit="photo", leave=False,
                                  disable=None)):
        others = [i for i in ids if i != item]
        background = int(others[rng.integers(len(others))]) if others else None
        image = picture(item)
        found = codes.encode(extract(made_photo(image, picture(background) if background is not None else None, rng),
                                     options, keep=True))
        shown = [item] + ([background] if background is not None else [])  # the pictures in the photo
        voted = [i for i, _ in candidates(found, CANDIDATES + 2) if i not in shown][:CANDIDATES]
        pictures = features([*shown, *voted])
        verdicts = verify(found, pictures, verifying)
        seen = (found.pixels, 1.0)
        cells = [None if v.quad is None else placed(small(i, f.size), f.size, seen, found.size, v.quad)
                 for i, f, v in zip([*shown, *voted], pictures, verdicts)]
        right.append(verdicts[0].inliers)
        if cells[0] is not None:
            right_cells.append(cells[0])
        if n < COPIES:  # a copy of the picture: what one picture disagrees with itself
            copy = codes.encode(extract(made_copy(image, rng), options, keep=True))
            [again] = verify(copy, pictures[:1], verifying)
            if again.quad is not None:
                copies.append(placed(small(item, pictures[0].size), pictures[0].size, (copy.pixels, 1.0), copy.size,
                                     again.quad, light=False))
            [there] = verify(found, [copy], verifying)  # and how much more than its picture a copy disagrees with
            if there.quad is not None and cells[0] is not None:  # the photo: the margin
                seen_copy = placed(shrunk(copy.pixels, copy.size), copy.size, seen, found.size, there.quad)
                spread_cells.append(((seen_copy, there.inliers), (cells[0], verdicts[0].inliers)))
        sources = list(zip(shown, pictures, verdicts, cells))
        direct = [verify(own, pictures[len(shown):], verifying) for own in pictures[:len(shown)]]
        for j, (candidate, stored, verdict, looks) in enumerate(zip(voted, pictures[len(shown):],
                                                                   verdicts[len(shown):], cells[len(shown):])):
            wrong.append((verdict, looks, candidate, stored, [(*source, d[j]) for source, d in zip(sources, direct)]))
    bounds = _bounds(right_cells, copies, spread_cells)

    def shown_apart(verdict: Verdict, looks: Cells | None, candidate: int, stored: LocalFeatures,
                    sources: list) -> bool:
        """Whether this candidate is no chance match the search would show as verified: a look-alike of a
        picture in the photo (found over it, disagreeing beyond the margin more than it does), a true copy of the
        photo's own picture (a re-upload, a re-encode, a crop: it matches it directly and agrees with it after
        alignment), or a picture sharing print with the background (another product the photo shows). A sibling
        of the photo's own picture that the comparison cannot tell apart is shown, and counts."""
        for n, (source, own, there, own_cells, direct) in enumerate(sources):
            if looks is not None and own_cells is not None and verdict.quad is not None and there.quad is not None \
                    and overlap(verdict.quad, there.quad) >= OVERLAP \
                    and _worse(looks, verdict.inliers, own_cells, there.inliers, bounds) > bounds.margin:
                return True
            if direct.quad is not None and direct.inliers >= FLOOR and (n > 0 or placed(
                    small(candidate, stored.size), stored.size, small(source, own.size), own.size, direct.quad,
                    light=False).changed(bounds) <= bounds.copy):
                return True  # a copy of the photo's picture, or anything sharing print with its background: content
        return False  # the photo shows (the background is another product, mostly hidden: its own match is weak)

    shown = [(verdict, sources) for verdict, looks, candidate, stored, sources in wrong
             if not shown_apart(verdict, looks, candidate, stored, sources)]
    chance = np.array([v.inliers for v, sources in shown if not any(  # no print shared with the photo's pictures
        direct.quad is not None and direct.inliers >= FLOOR for *_, direct in sources)])
    allowed = int(np.floor(rate * len(chance)))
    reached = np.sort(chance)[::-1]
    threshold = max(FLOOR, int(reached[allowed]) + 1 if allowed < len(reached) else FLOOR)
    wrong_counts, right_counts = np.array([v.inliers for v, _ in shown]), np.array(right)
    siblings = [looks.disagreement(bounds) for verdict, looks, *_ in wrong
                if verdict.inliers >= threshold and looks is not None]
    return Calibration(threshold, float((wrong_counts >= threshold).mean()) if len(wrong_counts) else 0.0,
                       float((right_counts >= threshold).mean()) if len(right) else 0.0, len(chosen),
                       bounds.as_meta(), float(np.median(siblings)) if siblings else None)


def _worse(cells: Cells, inliers: int, best: Cells, best_inliers: int, bounds: Bounds) -> float:
    """How much worse one candidate found over a part of a photo stands than another found there
    (:func:`~lookalike.verification.appearance.standing`)."""
    most = max(inliers, best_inliers)
    return standing(cells.disagreement(bounds), inliers, most) - standing(best.disagreement(bounds), best_inliers, most)


def _bounds(right: list[Cells], copies: list[Cells], spreads: list[tuple[tuple[Cells, int], tuple[Cells, int]]]
            ) -> Bounds:
    """The comparison's bounds: each cell statistic's 99th percentile over the cells of right pairs (a made photo
    against its own picture) and over the cells of copies against their own picture (the ``picture_*`` bounds);
    the copy bound: the 99th percentile of the share of cells in which copies differ beyond the latter, at least
    :data:`SMALLEST_COPY`; the margin: the 99th percentile of how much worse than its picture a copy stands in a
    photo of it (pairs of ``spreads``: the copy's cells in the photo and its inliers, the picture's), at least
    :data:`SMALLEST_MARGIN`."""
    default = Bounds()
    right, copies = [c for c in right if c.valid.any()], [c for c in copies if c.valid.any()]

    def bound(cells: list[Cells], name: str, least: float) -> float:
        found = [getattr(c, name)[c.valid] for c in cells]
        return max(least, float(np.percentile(np.concatenate(found), 99))) if found else getattr(default, name)

    found = Bounds(bound(right, "lightness", 0.1), bound(right, "contrast", 0.1), bound(right, "colour", 3.0),
                   default.margin, default.copy, *(bound(copies, name, least) for name, least in
                                                   (("lightness", 0.05), ("contrast", 0.05), ("colour", 1.5))))
    shares = [c.changed(found) for c in copies]
    more = [_worse(*a, *b, found) for a, b in spreads if a[0].valid.any() and b[0].valid.any()]
    copy = max(SMALLEST_COPY, float(np.percentile(shares, 99)) if shares else default.copy)
    margin = max(SMALLEST_MARGIN, float(np.percentile(more, 99)) if more else default.margin)
    return replace(found, margin=margin, copy=copy)
