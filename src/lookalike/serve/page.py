"""What the page serves and how it answers, apart from the web framework's routing: the options it is started with
(:class:`PageOptions`), the catalogue it keeps current (:class:`LiveCatalogue`) and one state object
(:class:`Page`) that decodes uploads within their budget, searches, marks and draws thumbnails. Its methods raise
``HTTPException`` with the status each failure deserves; :mod:`lookalike.serve.routes` only maps requests onto
them."""

from __future__ import annotations

import io
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import cv2
from fastapi import HTTPException, UploadFile
from PIL import Image

from lookalike.boxes.finder import BoxFinder, resolve_box_file
from lookalike.catalogue.backends import open_catalogue
from lookalike.catalogue.filters import restriction
from lookalike.catalogue.harvest import HarvestOptions, Harvester
from lookalike.catalogue.local import photo_features
from lookalike.catalogue.query import SearchOptions, search_catalogue
from lookalike.catalogue.verified import verify_count
from lookalike.choices import MAX_K
from lookalike.data.feedback import PHOTO_SIDE, VERDICTS, FeedbackLog
from lookalike.data.images import cut, load_rgb, parse_box
from lookalike.data.transforms import eval_resize
from lookalike.embedder.file import calibrated_threshold, embedder_from_payload
from lookalike.errors import LookalikeError
from lookalike.serve.admission import Admission, AdmissionOptions, Busy

THUMBNAIL = 256  # longest side of the pictures the page shows, in pixels
MAX_PHOTOS = 8  # photos of one item searched together
AUTO = "auto"  # the crop field's value for the box model's box
VERIFY_SIDE = 480  # a photo's short side decoded at least, for its local features (a JPEG: DCT scaling above it)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PageOptions:
    """How the page is served: ``embedder`` (default: the one the catalogue was built with), the upload limit,
    the most results one request may ask for, ``admission`` (searches at once by their cost), ``allowed_hosts`` (the Host header
    names answered; None: any), ``feedback`` (the folder marks go to; None: no marks), ``qe`` (alpha query
    expansion for requests that do not say; 0: off), the catalogue's ``backend`` and ``collection``, and
    ``boxes`` (the box model for ``crop=auto``; default: the catalogue's, else box.pt beside the embedder) and
    ``learn``: keep the photo of every one-photo search without a filter or category whose first result verified
    unambiguously as a harvested mark in the feedback folder (:mod:`lookalike.catalogue.harvest`)."""

    embedder: str | Path | None = None
    max_upload_mb: float = 10.0
    max_k: int = MAX_K
    admission: AdmissionOptions = field(default_factory=AdmissionOptions)
    allowed_hosts: list[str] | None = None
    feedback: str | Path | None = None
    qe: int = 0
    backend: str = "faiss"
    collection: str | None = None
    boxes: str | Path | None = None
    learn: bool = False

    @property
    def upload_limit(self) -> int:
        return int(self.max_upload_mb * 2**20)


class LiveCatalogue:
    """The catalogue a page serves, opened again when its ``.lkidx`` file changes: what ``lookalike index add`` /
    ``remove`` write is what the next request sees (a removed item is no longer found, marked or shown). A
    database collection is read live by its backend already."""

    def __init__(self, location: str | Path, backend: str, collection: str | None):
        self.location, self.backend, self.collection = location, backend, collection
        self._stamp: tuple[int, int, int] | None = None
        self._stamp = self._file_stamp()
        self._index = open_catalogue(location, backend, collection)
        self._lock = threading.Lock()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.backend != "faiss":
            return None
        try:
            found = os.stat(Path(self.location).expanduser())
        except OSError:  # moved away for a moment: keep serving what was loaded
            return self._stamp
        return found.st_ino, found.st_mtime_ns, found.st_size

    @property
    def index(self) -> Any:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    fresh = open_catalogue(self.location, self.backend, self.collection)
                    if fresh.meta["embedder_hash"] != self._index.meta["embedder_hash"]:
                        log.error("%s was rebuilt with another embedder: still serving the catalogue as it was; "
                                  "restart the page to serve the new one", self.location)
                    else:
                        self._index = fresh
                    self._stamp = stamp
        return self._index


class Page:
    """The page's state: the catalogue, its embedder and threshold, the box model, the feedback log, the limits."""

    def __init__(self, location: str | Path, options: PageOptions):
        self.options = options
        self.live = LiveCatalogue(location, options.backend, options.collection)
        index = self.live.index
        embedder_path = options.embedder or index.meta["embedder"]
        payload = index.check_embedder(embedder_path)
        self.embedder = embedder_from_payload(payload).eval()
        box_file = resolve_box_file(options.boxes, embedder_path, index.meta.get("boxes"))
        self.finder = BoxFinder.load(box_file) if box_file else None
        self.threshold = calibrated_threshold(payload)
        self.decode_side = eval_resize(self.embedder.preprocessing)
        self.marks = None if options.feedback is None else FeedbackLog(options.feedback)
        if options.learn and (self.marks is None or not index.keeps_local):
            raise LookalikeError("--learn keeps verified searches' photos in the feedback folder: it needs one (not "
                                 "--no-feedback) and a catalogue with local features (lookalike index build, the "
                                 "default)")
        self.thumbnail = lru_cache(maxsize=4096)(self._thumbnail)
        self.admission = Admission(options.admission)

    # -- admission -----------------------------------------------------------------------------------------------
    def work(self, options: SearchOptions, photos: int) -> int:
        """What a search costs: its photos times the candidates each is verified against (1 each unverified)."""
        try:
            return photos * max(1, verify_count(self.live.index, options.verify))
        except LookalikeError as e:  # verify asked of a catalogue without local features
            raise HTTPException(422, str(e)) from e

    @contextmanager
    def turn(self, client: str, work: int = 1) -> Iterator[None]:
        """Hold the request's place while it decodes and searches (503 with Retry-After when it gets none in
        time, see :mod:`lookalike.serve.admission`)."""
        try:
            with self.admission.turn(client, work):
                yield
        except Busy as e:
            raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from e

    # -- answers -------------------------------------------------------------------------------------------------
    @staticmethod
    def item_json(item_id: int, label: str, path: str) -> dict[str, Any]:
        return {"id": item_id, "label": label, "name": Path(path).name, "image": f"/api/items/{item_id}/image"}

    def answer(self, found: Any, k: int) -> dict[str, Any]:
        """An :class:`~lookalike.catalogue.query.Answer` as JSON, its first ``k`` results."""
        threshold = self.threshold
        return {"threshold": threshold, "category": found.category, "category_confidence": found.category_confidence,
                "results": [{**self.item_json(h.id, h.label, h.path), "score": h.score, "group": h.group,
                             "pictures": h.pictures, "match": None if threshold is None else h.score >= threshold,
                             "verified": h.verified, "inliers": h.inliers, "quad": h.quad,
                             "lookalike_of": h.lookalike_of}
                            for h in found.hits[:k]]}

    def item(self, item_id: int) -> dict[str, Any]:
        item = self.live.index.item(item_id)
        if item is None:
            raise HTTPException(404, f"No catalogue item has the id {item_id}")
        return item

    def search_options(self, k: int, fuse: str = "max", group_by: str | None = None, category: str | None = None,
                       category_by: str = "label", where: str | None = None,
                       expand: int | None = None, verify: int | None = None) -> SearchOptions:
        """A request's search options, refused (422) before any upload is decoded."""
        most = self.options.max_k
        expand = self.options.qe if expand is None else expand
        if not 1 <= k <= most:
            raise HTTPException(422, f"k must be between 1 and {most}")
        if not 0 <= expand <= most:
            raise HTTPException(422, f"qe must be between 0 (off) and {most}")
        if verify is not None and not 0 <= verify <= most:
            raise HTTPException(422, f"verify must be between 0 (off) and {most}")
        try:
            chosen = SearchOptions(k=k, fuse=fuse, group_by=group_by or None, category=category or None,
                                   category_by=category_by, filter=where or None, qe=expand,
                                   verify=verify).check()
            restriction(chosen.filter, self.live.index.columns())
            return chosen
        except LookalikeError as e:
            raise HTTPException(422, str(e)) from e

    def search(self, vectors: Any, options: SearchOptions, wholes: list[Any] | None = None) -> dict[str, Any]:
        """One answer; ``wholes``: the whole photos, for a verified search (where the catalogue keeps local
        features)."""
        index = self.live.index
        try:
            photos = None
            if wholes is not None and verify_count(index, options.verify):
                photos = photo_features(wholes, index.meta["local"])
            learner = self._learner(index, options, photos)
            asked = options if learner is None else replace(options, k=max(options.k, learner.candidates))
            found = search_catalogue(index, vectors, asked, photos)[0]
            if learner is not None:
                learner.keep(wholes[0], found.hits)
            return self.answer(found, options.k)
        except LookalikeError as e:  # an empty catalogue, an unknown column or category
            raise HTTPException(409 if not index.count() else 422, str(e)) from e

    def _learner(self, index: Any, options: SearchOptions, photos: list[Any] | None) -> Harvester | None:
        """The harvester that judges this search, where the page learns and the search is one whole verified photo
        over the whole catalogue (a filter or a category could hide the product it would be confused with)."""
        if not self.options.learn or photos is None or len(photos) != 1 or options.filter or options.category:
            return None
        return Harvester(index, self.embedder, self.marks, HarvestOptions(verify=verify_count(index, options.verify)))

    def embed(self, arrays: list[Any]) -> Any:
        try:
            return self.embedder.embed(arrays).numpy()
        except (cv2.error, ValueError, MemoryError) as e:
            raise HTTPException(415, "Not an image this server can prepare for search") from e

    def similar(self, item_id: int, options: SearchOptions) -> dict[str, Any]:
        try:
            vector = self.embedder.embed([self.item(item_id)["path"]]).numpy()
        except LookalikeError as e:
            raise self.gone(item_id, e) from e
        return self.search(vector, options)  # no photo: nothing to learn

    # -- uploads -------------------------------------------------------------------------------------------------
    def crops(self, texts: list[str], count: int) -> list[Any]:
        """Per photo: a box to cut it to, ``auto`` (the box model's) or None (the whole photo)."""
        if len(texts) > count:
            raise HTTPException(422, f"{len(texts)} crops for {count} photo(s)")
        if AUTO in texts and self.finder is None:
            raise HTTPException(422, "crop=auto needs a box model: start the server with --boxes FILE (python "
                                "train.py experiment=box makes one)")
        try:
            return [AUTO if t.strip() == AUTO else parse_box(t) if t.strip() else None for t in texts] + \
                [None] * (count - len(texts))
        except LookalikeError as e:
            raise HTTPException(422, str(e)) from e

    def decoded(self, image: UploadFile, budget: int, side: int | None, box: Any = None) -> tuple[Any, Any, int]:
        """One upload as an RGB array (cut to ``box``) within ``budget`` bytes, the whole photo, and its size."""
        data = image.file.read(budget + 1)
        if len(data) > budget:
            raise HTTPException(413, f"Upload larger than {self.options.max_upload_mb:g} MB")
        try:  # with a crop, decoded whole: the box is in the photo's own pixels
            array = load_rgb(io.BytesIO(data), name=(image.filename or "upload")[:100],
                             min_side=None if box is not None else side)
        except LookalikeError as e:
            raise HTTPException(415, f"Not an image this server can read: {e}") from e
        except (cv2.error, ValueError, MemoryError) as e:
            raise HTTPException(415, "Not an image this server can prepare for search") from e
        whole = array
        if box is not None:
            try:
                array = self.finder.crop([array])[0] if box == AUTO else cut(array, box)
            except LookalikeError as e:
                raise HTTPException(422, str(e)) from e
        return array, whole, len(data)

    def photos(self, uploads: list[UploadFile], side: int | None = None, boxes: list[Any] | None = None
               ) -> tuple[list[Any], list[Any]]:
        """Several uploads of one item, all together within the upload limit: as searched (cut to their boxes)
        and whole (what verification matches: the crop helps the embedding, the geometry wants the whole photo)."""
        if len(uploads) > MAX_PHOTOS:
            raise HTTPException(422, f"At most {MAX_PHOTOS} photos at once")
        if side is None:  # decoded large enough for local features where the catalogue keeps them
            side = max(self.decode_side, VERIFY_SIDE) if self.live.index.keeps_local else self.decode_side
        arrays, wholes, budget = [], [], self.options.upload_limit
        for upload, box in zip(uploads, boxes or [None] * len(uploads)):
            array, whole, size = self.decoded(upload, budget, side, box)
            arrays.append(array)
            wholes.append(whole)
            budget -= size
        return arrays, wholes

    def find_box(self, image: UploadFile) -> dict[str, Any]:
        if self.finder is None:
            raise HTTPException(404, "This server has no box model (lookalike serve --boxes FILE)")
        array, _, _ = self.decoded(image, self.options.upload_limit, side=None)
        [((x, y, w, h), confidence)] = self.finder.find([array])
        return {"box": [round(x), round(y), round(w), round(h)], "confidence": confidence,
                "found": confidence >= self.finder.min_confidence and w >= 2 and h >= 2}

    def mark(self, uploads: list[UploadFile], item_id: int, verdict: str) -> dict[str, Any]:
        if self.marks is None:
            raise HTTPException(404, "This server takes no feedback (started with --no-feedback)")
        if verdict not in VERDICTS:
            raise HTTPException(422, "verdict must be same or different")
        try:
            rows = self.marks.record(self.photos(uploads, PHOTO_SIDE)[0], self.item(item_id), verdict)
        except LookalikeError as e:  # the folder is full, or its lock is held too long
            log.error("feedback not kept in %s: %s", self.options.feedback, e)  # the log names the folder
            raise HTTPException(507, "The server cannot keep this mark now (its feedback folder is full, its disk is "
                                "full or it is busy): nothing of it was kept; its log says more") from e
        except OSError as e:
            log.error("cannot write feedback to %s: %s", self.options.feedback, e)
            raise HTTPException(507, "The server cannot write feedback: see its log") from e
        return {"recorded": len(rows), "item": item_id, "verdict": verdict}

    # -- catalogue pictures --------------------------------------------------------------------------------------
    def gone(self, item_id: int, e: Exception) -> HTTPException:
        log.warning("catalogue item %d: %s", item_id, e)  # the server's log names the file; the answer does not
        return HTTPException(410, f"The picture of catalogue item {item_id} is missing or unreadable on the server")

    def picture(self, item_id: int) -> bytes:
        """An item's picture as a JPEG of at most :data:`THUMBNAIL` px (kept for the last 4,096 asked)."""
        self.item(item_id)
        try:
            return self.thumbnail(item_id)
        except LookalikeError as e:
            raise self.gone(item_id, e) from e

    def _thumbnail(self, item_id: int) -> bytes:
        picture = Image.fromarray(load_rgb(self.item(item_id)["path"], min_side=THUMBNAIL))
        picture.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=85)
        return out.getvalue()
