"""Harvest: a shop's own unlabeled photos labelled by verified search, kept as training marks.

Each photo is searched with verification (:mod:`lookalike.catalogue.verified`). It is kept as a "same" mark of the
product it verified (:class:`~lookalike.data.feedback.FeedbackLog`, ``source=harvested``, with the inliers and the
outline's box) only when the match is unambiguous (:func:`judge`): the first result verified, no picture of another
product verified or set apart as its look-alike (a photo that verifies against two products is kept for neither),
and every other product's best candidate behind it by ``margin`` inliers. The margin defaults to the catalogue's
calibrated threshold: the inliers that at most 0.2 % of wrong pairs reach on photos made of the catalogue itself
(:mod:`lookalike.verification.calibration`), so the runner-up is at least as far below the winner as chance is
below a match. On pictures without print (fruit, flowers) nothing verifies and nothing is kept.

``lookalike harvest`` runs it over a folder or a list of photos, resumably (a journal beside the marks names every
photo judged by its content's hash, so no photo is judged or kept twice); ``lookalike serve --learn`` keeps the
page's unambiguous one-photo searches the same way.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from lookalike.catalogue.base import Catalogue, SearchHit, hit_value
from lookalike.catalogue.local import photo_features
from lookalike.catalogue.query import SearchOptions, search_catalogue
from lookalike.catalogue.verified import VERIFY_K
from lookalike.data.feedback import Evidence, FeedbackLog
from lookalike.data.images import load_rgb
from lookalike.data.listing import MANIFEST_SUFFIXES, list_image_files, read_rows
from lookalike.errors import LookalikeError
from lookalike.files import file_digest

log = logging.getLogger(__name__)
KEPT, UNVERIFIED, AMBIGUOUS, UNREADABLE, FULL = "kept", "unverified", "ambiguous", "unreadable", "full"
JOURNAL = "harvest.jsonl"


@dataclass(frozen=True)
class HarvestOptions:
    """``verify``: candidates verified per photo (of the embedding and of the descriptor votes, each); ``margin``:
    inliers the product must lead every other product's best candidate by (None: the catalogue's calibrated
    threshold); ``by``: what makes another product (``label`` or a manifest column)."""

    verify: int = VERIFY_K
    margin: int | None = None
    by: str = "label"

    def check(self) -> HarvestOptions:
        if self.verify < 1 or (self.margin is not None and self.margin < 0):
            raise LookalikeError("harvest: verify must be at least 1 and margin at least 0 inliers")
        return self


@dataclass(frozen=True)
class Judgement:
    """A photo's verdict (``kept``, ``unverified`` or ``ambiguous``), the result it was kept for, the inliers of the
    best candidate of another product, and the evidence the mark keeps."""

    verdict: str
    hit: SearchHit | None = None
    runner_up: int = 0
    evidence: Evidence | None = None


def judge(hits: list[SearchHit], margin: int, by: str = "label") -> Judgement:
    """Whether a verified search's results (all its candidates, in order) name one product unambiguously."""
    first = hits[0] if hits else None
    if first is None or not first.verified or first.quad is None:
        return Judgement(UNVERIFIED)
    product = hit_value(first, by)
    others = [h for h in hits[1:] if hit_value(h, by) != product or not product]
    runner_up = max((h.inliers or 0 for h in others), default=0)
    if any(h.verified or h.lookalike_of is not None for h in others) or first.inliers - runner_up < margin:
        return Judgement(AMBIGUOUS, first, runner_up)
    corners = np.asarray(first.quad, np.float64)
    box = tuple(float(v) for v in np.r_[corners.min(0), corners.max(0)].clip(0.0, 1.0))
    return Judgement(KEPT, first, runner_up, Evidence(int(first.inliers), box))


class Harvester:
    """Judges photos against one catalogue (verified search with its own embedder) and keeps the unambiguous ones
    in a feedback folder: what ``lookalike harvest`` and ``lookalike serve --learn`` share."""

    def __init__(self, index: Catalogue, embedder: Any, marks: FeedbackLog, options: HarvestOptions = HarvestOptions()):
        local = index.check_local()  # a catalogue without local features cannot verify: one message
        self.index, self.embedder, self.marks, self.options = index, embedder, marks, options.check()
        self.margin = int(local["threshold"]) if options.margin is None else options.margin

    @property
    def candidates(self) -> int:
        """Results a judged search returns: as many as the embedding's candidates it verifies (the verified ones and
        their look-alikes come first; a search for more would verify more)."""
        return max(1, min(self.index.count(), self.options.verify))

    def search(self, photo: np.ndarray) -> list[SearchHit]:
        """All the verified candidates of one photo (RGB), in order."""
        vectors = self.embedder.embed([photo]).numpy()
        found = photo_features([photo], self.index.meta["local"])
        options = SearchOptions(k=self.candidates, verify=self.options.verify)
        return search_catalogue(self.index, vectors, options, found)[0].hits

    def keep(self, photo: np.ndarray, hits: list[SearchHit]) -> Judgement:
        """Judge a photo's results; keep it as a harvested mark when unambiguous (once: a photo the folder already
        keeps adds no mark). A full folder keeps nothing more (verdict ``full``, logged)."""
        judgement = judge(hits, self.margin, self.options.by)
        if judgement.verdict != KEPT:
            return judgement
        item = self.index.item(judgement.hit.id)
        try:
            self.marks.record([photo], item or {"id": judgement.hit.id, "label": judgement.hit.label,
                                                "path": judgement.hit.path}, "same", judgement.evidence)
        except LookalikeError as e:
            log.warning("harvest: %s", e)
            return Judgement(FULL, judgement.hit, judgement.runner_up)
        return judgement


@dataclass
class Harvest:
    """What one harvest did: each photo's verdict by path (``verdicts``), and, where the photos came with labels,
    the kept photos whose product was right (``right``) and those with a known label (``checked``)."""

    verdicts: dict[str, str] = field(default_factory=dict)
    products: Counter = field(default_factory=Counter)
    right: int = 0
    checked: int = 0

    def count(self, verdict: str) -> int:
        return sum(1 for v in self.verdicts.values() if v == verdict)

    def summary(self) -> str:
        total, kept = len(self.verdicts), self.count(KEPT)
        text = (f"kept {kept} of {total} photo(s) ({kept / max(total, 1):.0%}) as marks of {len(self.products)} "
                f"product(s); {self.count(UNVERIFIED)} did not verify, {self.count(AMBIGUOUS)} were ambiguous, "
                f"{self.count(UNREADABLE)} unreadable")
        repeated = self.count("repeated")
        if repeated:
            text += f", {repeated} repeated an earlier photo"
        if self.count(FULL):
            text += f", {self.count(FULL)} not kept: the feedback folder is full"
        if self.checked:
            text += f"; precision against the given labels {self.right / self.checked:.3f} ({self.right}/{self.checked})"
        return text


def photo_list(source: str | Path) -> list[tuple[str, str | None]]:
    """Photos to harvest and their labels where known: a folder's images (recursively; no labels: a folder's name
    is not read as one), a text file of paths (one a line), or a CSV/parquet/JSON-lines table with ``path`` and
    optionally ``label`` (used only to measure the harvest's precision, never to judge)."""
    source = Path(source).expanduser()
    if source.is_dir():
        return [(p, None) for p in list_image_files(source)]
    if not source.is_file():
        raise LookalikeError(f"--photos {source}: no such folder or file (a folder of photos, a text file of paths, "
                             "or a CSV with a path column)")
    if source.suffix.lower() in MANIFEST_SUFFIXES:
        rows = read_rows(source)
        if rows and "path" not in rows[0]:
            raise LookalikeError(f"--photos {source}: a table needs a path column (and may have label)")
        return [(str(source.parent / r["path"]), r.get("label") or None) for r in rows]
    lines = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    return [(str(source.parent / line), None) for line in lines]


def _journal(folder: Path) -> dict[str, dict[str, Any]]:
    """The photos an earlier harvest into ``folder`` judged, by content hash (a line a killed run cut is skipped)."""
    seen = {}
    path = folder / JOURNAL
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                seen[str(entry["hash"])] = entry
            except (ValueError, KeyError, TypeError):
                continue
    return seen


def harvest(harvester: Harvester, photos: Iterable[tuple[str, str | None]], progress: bool = True) -> Harvest:
    """Judge every photo (path, known label or None) and keep the unambiguous ones; resumable: photos the folder's
    journal already names (by content) are counted as they were judged, not searched again."""
    folder = harvester.marks.folder
    folder.mkdir(parents=True, exist_ok=True)
    seen = _journal(folder)
    result = Harvest()
    photos = list(photos)
    with open(folder / JOURNAL, "a") as journal:
        for path, label in tqdm(photos, desc="harvest", unit="photo", disable=not progress):
            try:
                digest = file_digest(path)
                entry = seen.get(digest)
                if entry is None:
                    judgement = harvester.keep(photo := load_rgb(path), harvester.search(photo))
                    hit = judgement.hit
                    entry = {"hash": digest, "path": path, "verdict": judgement.verdict,
                             "label": None if hit is None else hit.label, "inliers": None if hit is None else hit.inliers,
                             "runner_up": judgement.runner_up}
                    journal.write(json.dumps(entry) + "\n")
                    journal.flush()
                    seen[digest] = {**entry, "path": None}  # a second file of the same content is a repeat
                elif entry.get("path") != path:
                    result.verdicts[path] = "repeated"
                    continue
            except (LookalikeError, OSError) as e:
                log.warning("harvest: skipping %s (%s)", path, e)
                result.verdicts[path] = UNREADABLE
                continue
            result.verdicts[path] = entry["verdict"]
            if entry["verdict"] == KEPT:
                result.products[entry["label"]] += 1
                if label is not None:
                    result.checked += 1
                    result.right += int(label == entry["label"])
    return result
