"""Feedback on search results: a person marks a result "same product" or "not the same".

The page appends marks to a feedback folder beside the index (``catalog.feedback/``: ``feedback.csv`` and the
query photos, re-encoded, under ``photos/``); the index itself is never written. Training reads the CSV
(``python train.py data.feedback=catalog.feedback/feedback.csv``):

- a "same" mark adds the photo to the training set as an image of the marked item's label, and the item's
  catalogue picture with it (a label training has never seen becomes a new class of the two);
- a "different" mark says the photo is not that item: the photo's class (from a "same" mark of the same photo,
  else a class of the photo alone, whose augmented views are its positives) and the item's class are put in
  the same batches (:class:`lookalike.data.samplers.HardPairBatches`), where the miner finds the hard negatives.

Marks come from a person (``source=person``: the page's buttons) or from verified search (``source=harvested``:
``lookalike harvest`` and ``lookalike serve --learn``, :mod:`lookalike.catalogue.harvest`); a harvested mark also
keeps the inliers that verified it and the product's box in the photo (``x,y,width,height`` in the kept photo's
pixels, the outline verification found), which the box model trains on.

Marks on validation classes are left out (checkpoints are chosen on classes never trained on), and feedback
photos are left out of the test queries. With ``held_out_share`` the photos of a share of the marked products are
the validation queries instead (:func:`held_out_photos`: photo -> catalogue, the job itself).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.data.images import unreadable_images
from lookalike.data.table import ImageTable
from lookalike.errors import LookalikeError
from lookalike.files import atomic_write, locked

log = logging.getLogger(__name__)
COLUMNS = ("time", "photo", "verdict", "item", "label", "path", "source", "inliers", "x", "y", "width", "height")
VERDICTS = ("same", "different")
SOURCES = ("person", "harvested")
BOX = ("x", "y", "width", "height")
MAX_PHOTOS = 10_000  # photos one feedback folder keeps (each at most PHOTO_SIDE px, JPEG): bounded disk
PHOTO_SIDE = 1024
MAX_CSV_BYTES = 64 * 2**20  # about 400,000 marks
LAYOUT = """  a CSV file with a header row and the columns
    photo    the query photo (path relative to the CSV's folder, or absolute)
    verdict  same | different
    label    the label of the catalogue item marked
    path     the item's catalogue picture (used when training has never seen its label)
    source   optional: person | harvested (verified search labelled the photo)
    x,y,width,height  optional: the product's box in the photo, in pixels (harvested marks)
  (lookalike serve and lookalike harvest write it: catalog.feedback/feedback.csv beside the index)"""


def feedback_folder(index_path: str | Path) -> Path:
    """Where the page keeps feedback on ``catalog.lkidx``: ``catalog.feedback/`` beside it."""
    return Path(index_path).with_suffix(".feedback")


class FeedbackLog:
    """Appends marks to ``folder/feedback.csv`` (under its lock: several servers lose nothing) and keeps each
    marked photo once (named by its content's hash, re-encoded as JPEG of at most ``PHOTO_SIDE`` px: nothing of
    the upload but its pixels is kept), at most ``max_photos`` of them and ``max_csv_bytes`` of marks."""

    def __init__(self, folder: str | Path, max_photos: int = MAX_PHOTOS, max_csv_bytes: int = MAX_CSV_BYTES):
        self.folder, self.max_photos, self.max_csv_bytes = Path(folder), max_photos, max_csv_bytes
        self.file = self.folder / "feedback.csv"

    def _photo(self, image: np.ndarray) -> tuple[str, tuple[int, int], bool]:
        """The photo kept (its name), its size as kept (width, height), and whether it is new to the folder."""
        picture = Image.fromarray(image)
        picture.thumbnail((PHOTO_SIDE, PHOTO_SIDE))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=90)
        data = out.getvalue()
        name = f"photos/{hashlib.sha256(data).hexdigest()[:24]}.jpg"
        path = self.folder / name
        new = not path.exists()
        if new:
            kept = self.folder / "photos"
            if kept.is_dir() and sum(1 for _ in kept.glob("*.jpg")) >= self.max_photos:
                raise LookalikeError(f"The feedback folder {self.folder} holds {self.max_photos} photos, its limit: "
                                     "train with it (data.feedback=...), then move it away to start a new one")
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        return name, picture.size, new

    def record(self, images: list[np.ndarray], item: dict[str, Any], verdict: str,
               evidence: Evidence | None = None) -> list[dict[str, str]]:
        """Append one mark for each photo of a query (RGB arrays) on catalogue ``item``; returns the rows. With
        ``evidence`` the marks are harvested (verified search's): a photo the folder already keeps is not marked
        again (it is named by its content), and each row carries the inliers and the box."""
        if verdict not in VERDICTS:
            raise LookalikeError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
        self.folder.mkdir(parents=True, exist_ok=True)
        with locked(self.file):
            if self.file.exists() and self.file.stat().st_size >= self.max_csv_bytes:
                raise LookalikeError(f"The feedback file {self.file} has reached {self.max_csv_bytes // 2**20} MB, its "
                                     "limit: train with it (data.feedback=...), then move its folder away to start "
                                     "a new one")
            rows = []
            for image in images:
                name, size, new = self._photo(image)
                if evidence is not None and not new:
                    continue
                row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "photo": name, "verdict": verdict,
                       "item": str(item["id"]), "label": str(item.get("label") or ""), "path": str(item["path"]),
                       "source": "person" if evidence is None else "harvested"}
                rows.append({**row, **({} if evidence is None else evidence.cells(size))})
            if rows:
                _append_whole(self.file, _csv_rows(self.file, rows), _csv_rows(None, []))
        return rows


@dataclass(frozen=True)
class Evidence:
    """What verified a harvested mark: its ``inliers`` and the product's ``box`` in the photo (x0, y0, x1, y1 as
    fractions of its width and height)."""

    inliers: int
    box: tuple[float, float, float, float]

    def cells(self, size: tuple[int, int]) -> dict[str, str]:
        """The mark's ``inliers`` and ``x,y,width,height`` cells for a photo kept at ``size`` (width, height)."""
        (w, h), (x0, y0, x1, y1) = size, np.clip(self.box, 0.0, 1.0)
        box = (round(x0 * w), round(y0 * h), round((x1 - x0) * w), round((y1 - y0) * h))
        return {"inliers": str(self.inliers), **{k: str(v) for k, v in zip(BOX, box)}}


def _csv_rows(file: Path | None, rows: list[dict[str, str]]) -> bytes:
    """``rows`` as CSV lines in the columns of ``file``'s header (an older file keeps its own columns), or the
    header of a new file (``file`` None)."""
    columns = list(COLUMNS)
    if file is not None and file.exists() and file.stat().st_size:
        with open(file, newline="") as f:
            columns = next(csv.reader(f), columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    if file is None:
        writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue().encode()


# Cells a spreadsheet would read as a formula start with one of these; they are written after a ' (as spreadsheets
# expect), and so is a cell that starts with ' itself, so that reading takes exactly one ' off.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _uncell(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def _append_whole(path: Path, data: bytes, header: bytes) -> None:
    """Append ``data`` to ``path`` (``header`` first, to an empty file) whole or not at all: a failed write (a full
    disk) is cut back to where it started, and a row a killed writer left unfinished is cut off first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":  # half a row: back to the last whole one
            tail = os.pread(fd, min(end, 1 << 16), max(0, end - (1 << 16)))
            end = max(0, end - len(tail) + tail.rfind(b"\n") + 1) if b"\n" in tail else 0
            os.ftruncate(fd, end)
        data = data if end else header + data
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], end + written)
            os.fsync(fd)
        except OSError as e:
            os.ftruncate(fd, end)
            raise LookalikeError(f"The feedback file could not be written ({e.strerror or e}): nothing of this mark "
                                 "was kept; free some disk space") from e
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Mark:
    """One mark: ``photo`` is (or is not, ``verdict='different'``) the item labelled ``label``, pictured at ``path``;
    ``source``: who marked it; ``box``: the product's box in the photo (x, y, width, height in pixels) if known."""

    photo: str
    verdict: str
    label: str
    path: str
    source: str = "person"
    box: tuple[float, float, float, float] | None = None


def read_feedback(path: str | Path) -> list[Mark]:
    """The marks of a feedback CSV; rows cut short (a writer killed mid-line) are left out with a warning."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LookalikeError(f"data.feedback: no feedback file at '{path}'. Expected\n{LAYOUT}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"photo", "verdict", "label", "path"} <= set(rows[0]):
        raise LookalikeError(f"Feedback file '{path}' lacks columns; expected\n{LAYOUT}")
    whole = [r for r in rows if all(r.get(c) is not None for c in ("photo", "verdict", "label", "path"))]
    if len(whole) < len(rows):
        log.warning("feedback: left out %d row(s) cut short in %s", len(rows) - len(whole), path)
    unknown = sorted({r["verdict"] for r in whole} - set(VERDICTS))
    if unknown:
        raise LookalikeError(f"Feedback file '{path}': unknown verdict(s) {unknown}; use same or different")
    sources = sorted({r.get("source") or "person" for r in whole} - set(SOURCES))
    if sources:
        raise LookalikeError(f"Feedback file '{path}': unknown source(s) {sources}; use person or harvested")
    return [Mark(str(path.parent / _uncell(r["photo"])), r["verdict"], _uncell(r["label"]), _uncell(r["path"]),
                 r.get("source") or "person", _box(r, path, line)) for line, r in enumerate(whole, start=2)]


def _box(row: dict[str, str], path: Path, line: int) -> tuple[float, float, float, float] | None:
    cells = [(row.get(c) or "").strip() for c in BOX]
    if not any(cells):
        return None
    try:
        box = tuple(float(c) for c in cells)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(np.isfinite(box)) or min(box) < 0 or box[2] <= 0 or box[3] <= 0:
        raise LookalikeError(f"Feedback file '{path}' row {line}: the box x,y,width,height must be four numbers, "
                             "width and height above 0")
    return box


@dataclass
class WithFeedback:
    """The training table with the feedback's photos, the class pairs to batch together, and what was used."""

    table: ImageTable
    hard_pairs: list[tuple[str, str]]  # (photo's class, item's class) by name
    photos: set[str]
    summary: str


def held_out_photos(train: ImageTable, marks: list[Mark], share: float, seed: int = 0) -> ImageTable:
    """Validation photo -> catalogue from the marks themselves: the "same" photos of ``share`` of the marked
    products (drawn with ``seed``) query the training set's catalogue pictures (its gallery rows) and the marked
    items' pictures. Their marks are then left out of training (:func:`with_feedback`'s ``held_out``)."""
    same = [m for m in marks if m.verdict == "same"]
    products = sorted({m.label for m in same})
    if len(products) < 2 or not 0 < share < 1:
        raise LookalikeError(f"data.feedback_val={share}: holding out photos needs a share between 0 and 1 and "
                             f"'same' marks on at least 2 products (the feedback has {len(products)}); set "
                             "data.feedback_val=0 to validate as the data set does")
    count = min(len(products) - 1, max(1, round(share * len(products))))
    chosen = set(np.random.default_rng(seed).choice(products, count, replace=False).tolist())
    photos = list(dict.fromkeys(m.photo for m in same if m.label in chosen))
    label_of = {m.photo: m.label for m in same if m.label in chosen}
    gallery = dict(zip(np.asarray(train.paths)[train.is_gallery].tolist(),
                       np.asarray(train.label_names())[train.is_gallery].tolist()))
    gallery.update({m.path: m.label for m in same if m.path not in gallery})
    names = sorted(set(gallery.values()) | chosen)
    number = {n: i for i, n in enumerate(names)}
    paths = photos + list(gallery)
    labels = [number[label_of[p]] for p in photos] + [number[n] for n in gallery.values()]
    query = np.r_[np.ones(len(photos), bool), np.zeros(len(gallery), bool)]
    return ImageTable(paths, np.array(labels), query, ~query, class_names=names)


def with_feedback(train: ImageTable, marks: list[Mark], held_out: set[str], boxes: bool = False) -> WithFeedback:
    """``train`` plus the photos of ``marks`` (see the module's docstring), photos as queries and the pictures
    added as catalogue rows; marks naming a class of ``held_out`` (the validation classes) are left out.
    ``boxes``: harvested photos come with their box (crop box of the table: the box model trains on them)."""
    original = train.class_names or [str(i) for i in range(int(train.labels.max(initial=-1)) + 1)]
    names = list(original)
    number = {n: i for i, n in enumerate(names)}
    skipped = [m for m in marks if m.label in held_out]
    marks = [m for m in marks if m.label not in held_out]
    bad = unreadable_images(sorted({m.photo for m in marks} | {m.path for m in marks if m.verdict == "same"}))
    for image, problem in bad.items():
        log.warning("feedback: leaving out the marks on unreadable image %s (%s)", image, problem)
    unreadable = [m for m in marks if m.photo in bad or (m.verdict == "same" and m.path in bad)]
    marks = [m for m in marks if m not in unreadable]
    trained = dict(zip(map(os.path.realpath, train.paths), train.label_names()))
    photo_class = {m.photo: m.label for m in marks if m.verdict == "same"}
    for m in marks:
        photo_class.setdefault(m.photo, f"feedback photo {Path(m.photo).name}")
    photo_class.update({p: trained[os.path.realpath(p)] for p in photo_class if os.path.realpath(p) in trained})
    known = set(trained)
    rows: dict[str, str] = {}
    for m in marks:
        if os.path.realpath(m.photo) not in known:
            rows.setdefault(m.photo, photo_class[m.photo])
        if m.verdict == "same" and os.path.realpath(m.path) not in known:
            rows.setdefault(m.path, m.label)
    paths, labels = list(train.paths), list(train.labels)
    for row_path, name in rows.items():
        if name not in number:
            number[name] = len(names)
            names.append(name)
        paths.append(row_path)
        labels.append(number[name])
    is_photo = np.array([p in photo_class for p in rows], bool)
    found = {m.photo: m.box for m in marks if m.box is not None} if boxes else {}
    crops = None
    if train.boxes is not None or found:
        crops = np.full((len(paths), 4), np.nan, np.float32)
        if train.boxes is not None:
            crops[:len(train)] = train.boxes
        for i, row_path in enumerate(rows, start=len(train)):
            crops[i] = found.get(row_path, crops[i])
    table = ImageTable(paths, np.array(labels), class_names=names, boxes=crops,
                       is_query=np.r_[train.is_query, is_photo], is_gallery=np.r_[train.is_gallery, ~is_photo])
    present = set(table.label_names())
    pairs = sorted({(photo_class[m.photo], m.label) for m in marks
                    if m.verdict == "different" and m.label in present and m.label != photo_class[m.photo]})
    unmatched = sum(1 for m in marks if m.verdict == "different" and m.label not in present)
    same = sum(1 for m in marks if m.verdict == "same")
    added = len(names) - len(original)
    summary = (f"feedback: {same} 'same' and {len(marks) - same} 'different' mark(s) on {len(photo_class)} photo(s): "
               f"{len(rows)} image(s) added, {added} new class(es), {len(pairs)} hard-negative class pair(s)")
    if unreadable:
        summary += f"; {len(unreadable)} mark(s) on unreadable images left out"
    if skipped:
        summary += f"; {len(skipped)} mark(s) on validation classes left out"
    if unmatched:
        summary += f"; {unmatched} 'different' mark(s) on items whose label training has no image of, unused"
    return WithFeedback(table, pairs, set(photo_class), summary)
