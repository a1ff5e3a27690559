"""Aligned comparison: once a fit says where a catalogue picture lies in a photo, the two are compared *there*, cell
by cell, so that siblings (one brand's variants: another colour, other words or fields) tell apart where inliers
cannot (they count the print both share).

The picture is warped into the photo's frame over the box its outline covers, at most :data:`SIDE` pixels, and the
box is cut into :data:`GRID` x :data:`GRID` cells. Each cell that the picture covers is described, in CIE Lab, by
its mean lightness, its contrast (the lightness's spread) and its mean chroma, statistics that a few pixels of
misalignment, blur and noise barely move. The photo's light is then fitted to the picture's over the cells both
show, robustly (medians, so that a variant's other field or a glare does not move the fit): a gain and an offset of
the lightness (exposure, contrast) and a shift of the chroma (white balance). Each difference is measured in units
of the catalogue's calibrated bound (what a made photo of a picture differs from it in one cell of a hundred).
Against a photo, the disagreement is the mean over the cells of the contrast's and the chroma's differences, each
capped at :data:`CAP` (an occluded or glaring cell counts as much as any other that differs entirely; the light of
a photo varies across the picture too much for the mean lightness); a candidate's standing adds the share of
inliers it lacks against the best candidate found over the same part of the photo. Between two catalogue
pictures the mean lightness counts too, and what is measured is the share of cells that differ far beyond the
bounds a copy reaches. OpenCV warps and converts; the cell statistics are a few array operations written here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import cv2
import numpy as np

SIDE = 96  # the compared box's longest side, in pixels
GRID = 8  # cells per side
FULL = 0.8  # a cell counts where the picture covers at least this share of it
CAP = 3.0  # a cell's difference counts at most this many bounds
APART = 3.0  # a cell of one catalogue picture differs from another's beyond this many of the picture bounds (a
# copy's cells reach one bound in one cell of a hundred, along its edges and fine print; another field, far more)


@dataclass(frozen=True)
class Bounds:
    """A catalogue's calibrated bounds: the differences of one cell's mean ``lightness`` and ``contrast`` (in standard
    deviations of the picture's lightness) and mean chroma (``colour``, Lab units) that a made photo of a picture
    reaches in one cell of a hundred; ``margin``: how much worse than the best candidate found over the same part of a
    photo a candidate must stand (:func:`standing`) to be a look-alike of it; ``copy``: two catalogue pictures that
    differ beyond :data:`APART` times the ``picture_*`` bounds (what a copy of a picture differs from it in one cell of
    a hundred: no light, white balance or blur between them) in at most this share of their cells are one picture
    (re-encoded, resized, cropped)."""

    lightness: float = 0.5
    contrast: float = 0.5
    colour: float = 12.0
    margin: float = 0.3
    copy: float = 0.04
    picture_lightness: float = 0.1
    picture_contrast: float = 0.1
    picture_colour: float = 3.0

    def as_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, meta: dict | None) -> Bounds:
        return cls(**meta) if meta else cls()


@dataclass
class Cells:
    """Per cell of the compared box: whether it counts (``valid``) and the differences of its mean lightness, its
    contrast and its mean chroma."""

    valid: np.ndarray
    lightness: np.ndarray
    contrast: np.ndarray
    colour: np.ndarray

    def disagreement(self, bounds: Bounds) -> float:
        """How much a picture disagrees with a photo: over the counted cells, the mean of each cell's contrast and
        chroma differences in bounds, each capped at :data:`CAP`, added (a blurred or glaring cell that every
        candidate differs in still shows which one's colours are right); :data:`CAP` twice where none counts. A
        cell's mean lightness does not count: a photo's light changes across the picture (shade, glare, a lamp's
        fall-off) far more than any cell of print differs."""
        if not self.valid.any():
            return 2 * CAP
        found = np.minimum(self.contrast / bounds.contrast, CAP) + np.minimum(self.colour / bounds.colour, CAP)
        return float(found[self.valid].mean())

    def changed(self, bounds: Bounds) -> float:
        """How much two catalogue pictures differ: the share of the counted cells whose mean lightness, contrast
        or chroma differs beyond :data:`APART` times the ``picture_*`` bounds; 1.0 where none counts."""
        if not self.valid.any():
            return 1.0
        beyond = (self.lightness > APART * bounds.picture_lightness) | \
            (self.contrast > APART * bounds.picture_contrast) | (self.colour > APART * bounds.picture_colour)
        return float(beyond[self.valid].mean())

    @property
    def coverage(self) -> float:
        """The share of the compared box's cells the picture covers."""
        return float(self.valid.mean())


NOTHING = Cells(np.zeros((GRID, GRID), bool), *(np.zeros((GRID, GRID)) for _ in range(3)))


def homography(source_size: tuple[int, int], quad: np.ndarray) -> np.ndarray:
    """The map from a picture of ``source_size`` (width, height) onto its outline ``quad`` (4 x 2 pixels)."""
    w, h = source_size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    return cv2.getPerspectiveTransform(corners, np.asarray(quad, np.float32))


def compare(picture: np.ndarray, photo: np.ndarray, to_photo: np.ndarray, light: bool = True) -> Cells:
    """``picture`` (RGB uint8) against ``photo`` (RGB uint8) where ``to_photo`` (3 x 3, picture pixels -> photo
    pixels) puts it, over the box of the photo its outline covers; ``light``: fit the photo's light to the
    picture's (False: two catalogue pictures, whose colours are theirs: a tinted edition is not a copy)."""
    h, w = picture.shape[:2]
    outline = cv2.perspectiveTransform(np.array([[[0, 0], [w, 0], [w, h], [0, h]]], np.float32), to_photo)[0]
    x0, y0 = np.floor(outline.min(0)).astype(int)
    x1, y1 = np.ceil(outline.max(0)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, photo.shape[1]), min(y1, photo.shape[0])
    if x1 - x0 < GRID or y1 - y0 < GRID:
        return NOTHING
    scale = SIDE / max(x1 - x0, y1 - y0)
    bw, bh = max(GRID, round((x1 - x0) * scale)), max(GRID, round((y1 - y0) * scale))
    into_box = np.array([[bw / (x1 - x0), 0, -x0 * bw / (x1 - x0)], [0, bh / (y1 - y0), -y0 * bh / (y1 - y0)],
                         [0, 0, 1]]) @ to_photo
    finer = np.diag([2.0, 2.0, 1.0]) @ into_box  # warped at twice the box's pixels, then averaged down as the photo;
    # its edge repeated, not blended with black (the cells along it would differ from any copy of it)
    shown = cv2.resize(cv2.warpPerspective(picture, finer, (2 * bw, 2 * bh), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE), (bw, bh),
                       interpolation=cv2.INTER_AREA)
    inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), into_box, (bw, bh), flags=cv2.INTER_NEAREST) > 127
    seen = cv2.resize(photo[y0:y1, x0:x1], (bw, bh), interpolation=cv2.INTER_AREA)
    if inside.sum() < GRID * GRID:
        return NOTHING
    rows, cols = np.linspace(0, bh, GRID + 1).astype(int), np.linspace(0, bw, GRID + 1).astype(int)
    a, b = _lab(shown), _lab(seen)
    valid = np.zeros((GRID, GRID), bool)
    mine, theirs = np.zeros((GRID, GRID, 4)), np.zeros((GRID, GRID, 4))
    for i in range(GRID):
        for j in range(GRID):
            cell = inside[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            if cell.size == 0 or cell.mean() < FULL:
                continue
            valid[i, j] = True
            mine[i, j] = _statistics(a[rows[i]:rows[i + 1], cols[j]:cols[j + 1]][cell])
            theirs[i, j] = _statistics(b[rows[i]:rows[i + 1], cols[j]:cols[j + 1]][cell])
    return _fitted(valid, mine, theirs, max(float(a[inside][:, 0].std()), 1.0), light)


def _statistics(lab: np.ndarray) -> np.ndarray:
    """A cell's mean lightness, its lightness's spread (contrast) and its mean chroma (a, b)."""
    return np.array([lab[:, 0].mean(), lab[:, 0].std(), *lab[:, 1:].mean(0)])


def _fitted(valid: np.ndarray, mine: np.ndarray, theirs: np.ndarray, spread: float, light: bool) -> Cells:
    """The cells' differences, with the other side's light fitted to the picture's over the cells both show
    (``light``), robustly (medians: cells that differ, a variant's other field, glare, do not move the fit): a
    gain of the lightness (exposure, contrast: the median ratio of the cells' contrasts), an offset of it and a
    shift of the chroma (white balance). Lightness differences are in the picture's lightness spreads
    (``spread``)."""
    found = Cells(valid, *(np.zeros((GRID, GRID)) for _ in range(3)))
    if not valid.any():
        return found
    a, b = mine[valid], theirs[valid]
    gain, offset, shift = 1.0, 0.0, np.zeros(2)
    if light:
        textured = a[:, 1] > 1.0
        gain = float(np.clip(np.median(b[textured, 1] / a[textured, 1]), 0.05, 20)) if textured.any() else 1.0
        offset = float(np.median(b[:, 0] - gain * a[:, 0]))
        shift = np.median(b[:, 2:] - a[:, 2:], axis=0)
    found.lightness[valid] = np.abs((b[:, 0] - offset) / gain - a[:, 0]) / spread
    found.contrast[valid] = np.abs(b[:, 1] / gain - a[:, 1]) / spread
    found.colour[valid] = np.linalg.norm(b[:, 2:] - shift - a[:, 2:], axis=1)
    return found


def shrunk(picture: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """A picture as the comparison takes it: scaled to its features' frame ``size`` times the returned scale,
    which keeps it at most twice the compared side."""
    scale = min(1.0, 2 * SIDE / max(size))
    return cv2.resize(picture, (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))),
                      interpolation=cv2.INTER_AREA), scale


def placed(picture: tuple[np.ndarray, float], size: tuple[int, int], seen: tuple[np.ndarray, float],
           seen_size: tuple[int, int], quad: list[list[float]], light: bool = True) -> Cells:
    """A picture (:func:`shrunk`, from its features' frame ``size``) against another picture or a photo (``seen``:
    its pixels and their scale from its features' frame ``seen_size``) where the fit's ``quad`` (fractions of
    ``seen_size``) puts it; ``light``: as :func:`compare`'s."""
    (small, scale), (pixels, seen_scale) = picture, seen
    to_seen = np.diag([seen_scale, seen_scale, 1]) @ homography(size, np.asarray(quad) * seen_size) \
        @ np.diag([1 / scale, 1 / scale, 1])
    return compare(small, pixels, to_seen, light)


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def overlap(first: list[list[float]], second: list[list[float]]) -> float:
    """How much two outlines (quads, in the same units) coincide: their intersection over their union (a logo's
    outline inside a cover's is not the same place)."""
    a, b = np.asarray(first, np.float32), np.asarray(second, np.float32)
    inter, _ = cv2.intersectConvexConvex(a, b)
    union = abs(cv2.contourArea(a)) + abs(cv2.contourArea(b)) - inter
    return float(inter / union) if union > 0 else 0.0


def covered(quad: list[list[float]]) -> float:
    """The share of a picture or photo that an outline found in it (fractions of its width and height) covers."""
    inside = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    area, _ = cv2.intersectConvexConvex(np.asarray(quad, np.float32), inside)
    return float(area)


OVERLAP = 0.5  # outlines overlapping this much (intersection over union) show the same part of a photo
MISSING = 0.5  # a candidate matching a share s fewer inliers than the best found at its place disagrees s x this more


def standing(disagreement: float, inliers: int, most: int) -> float:
    """How badly a candidate found over a part of a photo fits it, all told: its disagreement with the photo
    (:meth:`Cells.disagreement`) and the share of inliers it lacks against the most any candidate found there
    (``most``) times :data:`MISSING`. The inliers see what cells average away: a sibling's other words and
    fields match no features of the photo, a recoloured one barely loses any (SIFT sees grey levels)."""
    return disagreement + MISSING * (1 - inliers / most) if most > 0 else disagreement


@dataclass
class Aligned:
    """What the aligned comparison found for a search's verified candidates, by candidate position: the photo it
    was found in, its outline there (fractions of that photo), its inliers and its disagreement with the photo
    (:meth:`Cells.disagreement`; None: not compared, no picture to compare)."""

    photo: dict[int, int]
    quad: dict[int, list[list[float]]]
    inliers: dict[int, int]
    disagreement: dict[int, float | None]

    def same_place(self, i: int, j: int) -> bool:
        """Whether candidates ``i`` and ``j`` were found over the same part of the same photo."""
        return self.photo[i] == self.photo[j] and overlap(self.quad[i], self.quad[j]) >= OVERLAP

    @cached_property
    def standings(self) -> dict[int, float | None]:
        """Each candidate's :func:`standing` against the candidates found over the same part of the photo (None:
        not compared), found once: ordering and look-alikes ask for them again and again."""
        found: dict[int, float | None] = {}
        for i, disagreement in self.disagreement.items():
            most = max(self.inliers[j] for j in self.inliers if j == i or self.same_place(i, j))
            found[i] = None if disagreement is None else standing(disagreement, self.inliers[i], most)
        return found

    def standing(self, i: int) -> float | None:
        """Candidate ``i``'s standing (:attr:`standings`; None: not compared)."""
        return self.standings.get(i)

    def rivals(self, bounds: Bounds) -> dict[int, int]:
        """The look-alikes among the candidates: each one found where a better-standing candidate was, whose
        standing is worse than that one's by more than ``bounds.margin``, mapped to that candidate."""
        stands = self.standings
        compared = sorted((i for i, d in stands.items() if d is not None), key=lambda i: (stands[i], -self.inliers[i]))
        found: dict[int, int] = {}
        for n, i in enumerate(compared):
            for j in compared[:n]:
                if j not in found and stands[i] - stands[j] > bounds.margin and self.same_place(i, j):
                    found[i] = j
                    break
        return found

    def places(self, candidates: list[int]) -> dict[int, int]:
        """Each candidate's group of candidates found over the same part of a photo (named by its first member in
        the order given)."""
        group = {i: i for i in candidates}
        for n, i in enumerate(candidates):
            for j in candidates[:n]:
                if self.same_place(i, j):
                    group[i] = group[j]
                    break
        return group


def rounded(standing: float | None) -> float:
    """A standing as ordering compares it: in hundredths of a bound (the inliers it adds already break what would
    be ties of the cells alone); None last."""
    return 2 * CAP if standing is None else round(standing, 2)
