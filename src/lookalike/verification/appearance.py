"""Aligned comparison: once a fit says where a catalogue picture lies in a photo, the two are compared *there*, cell
by cell, so that siblings (one brand's variants: another colour, a few other words) tell apart where inliers
cannot (they count the print both share).

The picture is warped into the photo's frame over the box its outline covers, at most :data:`SIDE` pixels, and the
box is cut into :data:`GRID` x :data:`GRID` cells. Both are compared in CIE Lab with each one's light taken out: the
lightness as z-scores (exposure, contrast) and the chroma less its mean (white balance), over the pixels both show.
A cell *disagrees* where its lightness differs by more than the calibrated ``structure`` bound on average (other
words, another pattern) or its mean chroma by more than the ``colour`` bound (another colour). What is measured is
the share of cells that disagree (:attr:`Cells.disagreement`) and the share of the box the picture covers.
OpenCV warps and converts; the cell statistics are a few array operations written here."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

SIDE = 96  # the compared box's longest side, in pixels
GRID = 8  # cells per side
FULL = 0.8  # a cell counts where the picture covers at least this share of it


@dataclass(frozen=True)
class Bounds:
    """A catalogue's calibrated bounds: a cell disagrees above ``structure`` (mean lightness difference, in
    standard deviations) or ``colour`` (mean chroma difference, Lab units); a candidate disagreeing in ``margin``
    more of its cells than the best candidate for the same part of a photo is a look-alike of it; two pictures
    whose cells disagree in at most ``copy`` of them are one picture (re-encoded, resized, cropped, stickered)."""

    structure: float = 0.9
    colour: float = 12.0
    margin: float = 0.08
    copy: float = 0.08

    def as_meta(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, meta: dict | None) -> Bounds:
        return cls(**meta) if meta else cls()


@dataclass
class Cells:
    """Per cell of the compared box: whether it counts (``valid``), its mean lightness difference and its chroma
    difference."""

    valid: np.ndarray
    structure: np.ndarray
    colour: np.ndarray

    def disagreeing(self, bounds: Bounds) -> np.ndarray:
        return self.valid & ((self.structure > bounds.structure) | (self.colour > bounds.colour))

    def disagreement(self, bounds: Bounds) -> float:
        """The share of the counted cells that disagree (1.0 where none counts)."""
        counted = int(self.valid.sum())
        return float(self.disagreeing(bounds).sum() / counted) if counted else 1.0

    @property
    def coverage(self) -> float:
        """The share of the compared box's cells the picture covers."""
        return float(self.valid.mean())


NOTHING = Cells(np.zeros((GRID, GRID), bool), np.zeros((GRID, GRID)), np.zeros((GRID, GRID)))


def homography(source_size: tuple[int, int], quad: np.ndarray) -> np.ndarray:
    """The map from a picture of ``source_size`` (width, height) onto its outline ``quad`` (4 x 2 pixels)."""
    w, h = source_size
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    return cv2.getPerspectiveTransform(corners, np.asarray(quad, np.float32))


def compare(picture: np.ndarray, photo: np.ndarray, to_photo: np.ndarray) -> Cells:
    """``picture`` (RGB uint8) against ``photo`` (RGB uint8) where ``to_photo`` (3 x 3, picture pixels -> photo
    pixels) puts it, over the box of the photo its outline covers."""
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
    shown = cv2.warpPerspective(picture, into_box, (bw, bh), flags=cv2.INTER_AREA)
    inside = cv2.warpPerspective(np.full((h, w), 255, np.uint8), into_box, (bw, bh), flags=cv2.INTER_NEAREST) > 127
    seen = cv2.resize(photo[y0:y1, x0:x1], (bw, bh), interpolation=cv2.INTER_AREA)
    if inside.sum() < GRID * GRID:
        return NOTHING
    a, b = _normalised(shown, inside), _normalised(seen, inside)
    rows, cols = np.linspace(0, bh, GRID + 1).astype(int), np.linspace(0, bw, GRID + 1).astype(int)
    valid, structure, colour = (np.zeros((GRID, GRID), bool), np.zeros((GRID, GRID)), np.zeros((GRID, GRID)))
    for i in range(GRID):
        for j in range(GRID):
            cell = inside[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            if cell.size == 0 or cell.mean() < FULL:
                continue
            pa, pb = a[rows[i]:rows[i + 1], cols[j]:cols[j + 1]][cell], b[rows[i]:rows[i + 1], cols[j]:cols[j + 1]][cell]
            valid[i, j] = True
            structure[i, j] = float(np.abs(pa[:, 0] - pb[:, 0]).mean())
            colour[i, j] = float(np.linalg.norm(pa[:, 1:].mean(0) - pb[:, 1:].mean(0)))
    return Cells(valid, structure, colour)


def shrunk(picture: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """A picture as the comparison takes it: scaled to its features' frame ``size`` times the returned scale,
    which keeps it at most twice the compared side."""
    scale = min(1.0, 2 * SIDE / max(size))
    return cv2.resize(picture, (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))),
                      interpolation=cv2.INTER_AREA), scale


def placed(picture: tuple[np.ndarray, float], size: tuple[int, int], seen: tuple[np.ndarray, float],
           seen_size: tuple[int, int], quad: list[list[float]]) -> Cells:
    """A picture (:func:`shrunk`, from its features' frame ``size``) against another picture or a photo (``seen``:
    its pixels and their scale from its features' frame ``seen_size``) where the fit's ``quad`` (fractions of
    ``seen_size``) puts it."""
    (small, scale), (pixels, seen_scale) = picture, seen
    to_seen = np.diag([seen_scale, seen_scale, 1]) @ homography(size, np.asarray(quad) * seen_size) \
        @ np.diag([1 / scale, 1 / scale, 1])
    return compare(small, pixels, to_seen)


def _normalised(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Lab with its light taken out over ``mask``: lightness as z-scores, chroma less its mean."""
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    shown = lab[mask]
    lab[..., 0] = (lab[..., 0] - shown[:, 0].mean()) / max(float(shown[:, 0].std()), 1.0)
    lab[..., 1:] -= shown[:, 1:].mean(0)
    return lab


def overlap(first: list[list[float]], second: list[list[float]]) -> float:
    """How much two outlines (quads, in the same units) overlap: the intersection over the smaller one's area."""
    a, b = np.asarray(first, np.float32), np.asarray(second, np.float32)
    area = min(abs(cv2.contourArea(a)), abs(cv2.contourArea(b)))
    if area <= 0:
        return 0.0
    inter, _ = cv2.intersectConvexConvex(a, b)
    return float(inter / area)


def covered(quad: list[list[float]]) -> float:
    """The share of a picture or photo that an outline found in it (fractions of its width and height) covers."""
    inside = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    area, _ = cv2.intersectConvexConvex(np.asarray(quad, np.float32), inside)
    return float(area)


OVERLAP = 0.5  # outlines overlapping this much (of the smaller) show the same part of a photo


@dataclass
class Aligned:
    """What the aligned comparison found for a search's verified candidates, by candidate position: the photo it
    was found in, its outline there (fractions of that photo) and the share of its cells that disagree (None:
    not compared: no picture to compare)."""

    photo: dict[int, int]
    quad: dict[int, list[list[float]]]
    disagreement: dict[int, float | None]

    def same_place(self, i: int, j: int) -> bool:
        """Whether candidates ``i`` and ``j`` were found over the same part of the same photo."""
        return self.photo[i] == self.photo[j] and overlap(self.quad[i], self.quad[j]) >= OVERLAP

    def rivals(self, inliers: list[int], bounds: Bounds) -> dict[int, int]:
        """The look-alikes among the candidates: each one found where a better candidate was, whose cells disagree
        with the photo in ``bounds.margin`` more of the picture than that one's, mapped to that candidate."""
        compared = sorted((i for i, d in self.disagreement.items() if d is not None),
                          key=lambda i: (self.disagreement[i], -inliers[i]))
        found: dict[int, int] = {}
        for n, i in enumerate(compared):
            for j in compared[:n]:
                if j not in found and self.disagreement[i] - self.disagreement[j] > bounds.margin \
                        and self.same_place(i, j):
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


def cells_needed(disagreement: float | None) -> int:
    """A disagreement as a number of cells (what ordering compares: a cell more is a difference, less is noise)."""
    return GRID * GRID if disagreement is None else round(disagreement * GRID * GRID)
