"""The search page and JSON API over a catalogue index (``lookalike serve``): search with an uploaded photo.

The embedder and the index load once at start. Safe by default: it binds to loopback (and then answers only
requests addressed to a loopback name, against DNS rebinding), refuses uploads over the size limit while they
arrive (413, chunked ones too) and drops those that stall (408), runs at most ``slots`` searches at once (uploads
and "more like this"; 503 with Retry-After beyond), refuses POSTs from other sites' pages (403),
opens only the image formats users upload (415 for anything else), serves catalogue pictures by item id
only (never by path, and never names server paths) and never writes to the index: "same product" / "not the
same" marks on results go to a feedback folder beside it (:mod:`lookalike.data.feedback`), when one is given.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time

import asyncio
import io
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable

import cv2

from lookalike.data.feedback import PHOTO_SIDE, VERDICTS, FeedbackLog
from lookalike.data.images import cut, load_rgb, parse_box, return_large_buffers
from lookalike.data.transforms import eval_resize
from lookalike.errors import LookalikeError
from lookalike.catalogue.backends import open_catalogue
from lookalike.boxes.finder import BoxFinder, box_file_for
from lookalike.catalogue.filters import restriction
from lookalike.embedder.file import calibrated_threshold, embedder_from_payload
from lookalike.catalogue.query import Answer, SearchOptions, search_catalogue

PAGE = Path(__file__).parent / "web" / "index.html"
THUMBNAIL = 256  # longest side of the pictures the page shows, in pixels
K_CHOICES = (5, 10, 20, 50)
MAX_K = 100  # results (and query-expansion neighbours) one request may ask for
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]  # the Host header a loopback-bound page accepts
FORM_ROOM = 64 * 1024  # bytes of multipart form around the uploaded files
MAX_PHOTOS = 8  # photos of one item searched together
AUTO = "auto"  # the crop field's value for the box model's box
log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


BODY_IDLE_S = 5.0  # a request body that sends nothing for this long is dropped (408), freeing its slot
BODY_TOTAL_S = 30.0  # and one that takes longer than this in all
CROSS_SITE = {b"cross-site", b"same-site"}  # Sec-Fetch-Site values of a request another site's page made


def _same_origin(headers: dict[bytes, bytes]) -> bool:
    """Whether a browser made this request from the page's own origin, or no browser page made it at all (curl,
    scripts): a state-changing request another site's page sends carries ``Sec-Fetch-Site: cross-site`` or an
    ``Origin`` naming another host."""
    if headers.get(b"sec-fetch-site", b"").lower() in CROSS_SITE:
        return False
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = origin.split(b"://", 1)[-1].rstrip(b"/").lower()
    return origin != b"null" and host == headers.get(b"host", b"").lower()


class UploadGuard:
    """ASGI middleware in front of the app. A request that searches (every POST, and the GETs whose path ends in
    one of ``searching``) waits for none of its body before it has one of ``slots`` places (else 503 with
    Retry-After); its body is read into memory only up to ``limit`` bytes (else 413, as soon as it passes the
    limit, whatever its Content-Length says) and within :data:`BODY_IDLE_S` of silence and :data:`BODY_TOTAL_S`
    in all (else 408: a stalled upload frees its slot in seconds). A POST another site's page sends is refused
    (403), so no web page elsewhere can leave marks. So at most ``slots`` searches run and at most ``slots`` bodies
    of at most ``limit`` bytes are held at once, and an upload over the limit is never read whole nor spooled."""

    def __init__(self, app: Callable, limit: int, slots: int, too_large: str, searching: tuple[str, ...] = ()):
        self.app, self.limit, self.slots, self.too_large, self.busy = app, limit, slots, too_large, 0
        self.searching = searching

    async def _refuse(self, send: Send, status: int, detail: str, headers: list | None = None) -> None:
        body = ('{"detail": "%s"}' % detail).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reading = scope["method"] in ("GET", "HEAD", "OPTIONS")
        if reading and not scope.get("path", "").endswith(self.searching):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not reading and not _same_origin(headers):
            return await self._refuse(send, 403, "Refused: a request from another site's page")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, 413, self.too_large)
        if self.busy >= self.slots:
            return await self._refuse(send, 503, "Busy: try again in a moment", [(b"retry-after", b"1")])
        self.busy += 1
        try:
            if reading:
                return await self.app(scope, receive, send)
            try:
                body = await asyncio.wait_for(self._body(receive), BODY_TOTAL_S)
            except asyncio.TimeoutError:
                return await self._refuse(send, 408, "The upload stalled: send the whole request at once")
            except _TooLarge:
                return await self._refuse(send, 413, self.too_large)
            if body is None:  # the client went away
                return
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            self.busy -= 1

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole request body, each part within :data:`BODY_IDLE_S`; None if the client disconnected."""
        chunks, size, more = [], 0, True
        while more:
            message = await asyncio.wait_for(receive(), BODY_IDLE_S)
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                raise _TooLarge
            more = message.get("more_body", False)
        return b"".join(chunks)


class _TooLarge(Exception):
    """A request body passed the limit while it was read."""


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


def create_app(index_path: str | Path, embedder_path: str | Path | None = None, max_upload_mb: float = 10.0,
               max_k: int = MAX_K, slots: int = 4, allowed_hosts: list[str] | None = None,
               feedback: str | Path | None = None, qe: int = 0, backend: str = "faiss", collection: str | None = None,
               boxes: str | Path | None = None):
    """The FastAPI application over one catalogue (a ``.lkidx`` file, or with ``backend="milvus"`` a Milvus
    collection at the URI ``index_path``) and the embedder it was built with. ``slots``:
    searches with an upload at once; ``allowed_hosts``: the Host header names answered (None: any);
    ``feedback``: the folder marks on results are appended to (None: the page takes no marks); ``qe``: alpha
    query expansion with that many nearest items for requests that do not say (0: off); ``boxes``: the box model
    for ``crop=auto`` and the page's detected box (default: ``box.pt`` beside the embedder file, if there is one)."""
    try:
        from fastapi import FastAPI, File, Form, HTTPException, UploadFile
        from fastapi.responses import HTMLResponse, Response
        from starlette.middleware.trustedhost import TrustedHostMiddleware
    except ImportError as e:
        raise LookalikeError("lookalike serve needs the serve extra: pip install 'lookalike[serve]'") from e
    from PIL import Image

    return_large_buffers()  # a large upload's buffers go back to the system once answered
    live = LiveCatalogue(index_path, backend, collection)
    index = live.index
    payload = index.check_embedder(embedder_path or index.meta["embedder"])
    embedder = embedder_from_payload(payload).eval()
    default_boxes = box_file_for(embedder_path or index.meta["embedder"], index.meta.get("boxes"))
    finder = BoxFinder.load(boxes) if boxes else BoxFinder.load(default_boxes) if default_boxes.is_file() else None
    threshold = calibrated_threshold(payload)
    decode_side = eval_resize(embedder.preprocessing)
    marks = None if feedback is None else FeedbackLog(feedback)
    limit = int(max_upload_mb * 2**20)
    app = FastAPI(title="lookalike visual search", description=f"Search {index.count()} catalogue items "
                  "with a photo. Items are addressed by id.", version="1")
    app.add_middleware(UploadGuard, limit=limit + FORM_ROOM, slots=slots, searching=("/similar",),
                       too_large=f"Upload larger than {max_upload_mb:g} MB")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    def item_json(item_id: int, label: str, path: str) -> dict[str, Any]:
        return {"id": item_id, "label": label, "name": Path(path).name, "image": f"/api/items/{item_id}/image"}

    def answer(found: Answer) -> dict[str, Any]:
        return {"threshold": threshold, "category": found.category, "category_confidence": found.category_confidence,
                "results": [{**item_json(h.id, h.label, h.path), "score": h.score, "group": h.group,
                             "pictures": h.pictures, "match": None if threshold is None else h.score >= threshold}
                            for h in found.hits]}

    def catalogue_item(item_id: int) -> dict[str, Any]:
        item = live.index.item(item_id)
        if item is None:
            raise HTTPException(404, f"No catalogue item has the id {item_id}")
        return item

    def check_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise HTTPException(422, f"k must be between 1 and {max_k}")
        return k

    def search_vectors(vectors: Any, options: SearchOptions) -> dict[str, Any]:
        try:
            return answer(search_catalogue(live.index, vectors, options)[0])
        except LookalikeError as e:  # an empty catalogue, an unknown column or category
            raise HTTPException(409 if not live.index.count() else 422, str(e)) from e

    def options(k: int, fuse: str = "max", group_by: str | None = None, category: str | None = None,
                category_by: str = "label", where: str | None = None, expand: int | None = None) -> SearchOptions:
        expand = qe if expand is None else expand
        if not 0 <= expand <= max_k:
            raise HTTPException(422, f"qe must be between 0 (off) and {max_k}")
        try:
            chosen = SearchOptions(k=check_k(k), fuse=fuse, group_by=group_by or None, category=category or None,
                                   category_by=category_by, filter=where or None, qe=expand).check()
            restriction(chosen.filter, live.index.columns())  # a bad expression is refused before any upload is decoded
            return chosen
        except LookalikeError as e:
            raise HTTPException(422, str(e)) from e

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text().replace("{{COUNT}}", str(live.index.count())).replace(
            "{{FEEDBACK}}", "true" if marks else "false").replace("{{BOXES}}", "true" if finder else "false").replace(
            "{{K_OPTIONS}}", "".join(f'<option{" selected" if k == 10 else ""}>{k}</option>' for k in K_CHOICES))

    def decoded(image: UploadFile, budget: int, side: int | None = decode_side, box: Any = None) -> tuple[Any, int]:
        data = image.file.read(budget + 1)
        if len(data) > budget:
            raise HTTPException(413, f"Upload larger than {max_upload_mb:g} MB")
        try:  # with a crop, decoded whole: the box is in the photo's own pixels
            array = load_rgb(io.BytesIO(data), name=(image.filename or "upload")[:100],
                             min_side=None if box is not None else side)
        except LookalikeError as e:
            raise HTTPException(415, f"Not an image this server can read: {e}") from e
        except (cv2.error, ValueError, MemoryError) as e:
            raise HTTPException(415, "Not an image this server can prepare for search") from e
        if box is not None:
            try:
                array = finder.crop([array])[0] if box == AUTO else cut(array, box)
            except LookalikeError as e:
                raise HTTPException(422, str(e)) from e
        return array, len(data)

    @app.post("/api/search", summary="The catalogue items most similar to an uploaded photo (or to several photos "
              "of one item, fused)")
    def search(image: list[UploadFile] = File(..., description="one photo, or up to 8 of one item (JPEG, PNG, WebP, "
                                              "AVIF, GIF, BMP or TIFF); all together at most the upload limit"),
               k: int = Form(10, description="how many results"),
               fuse: str = Form("max", description="several photos: max (each item's best photo; measured better "
                                 "on real photos) or mean (of the embeddings)"),
               group_by: str = Form("", description="one result per value of this column: label or a manifest "
                                    "column (empty: one per picture)"),
               category: str = Form("", description="search only this category, or auto (decide it first)"),
               category_by: str = Form("label", description="the column holding the category"),
               filter: str = Form("", description='only items whose metadata match, e.g. brand == "acme" and '
                                  "price < 100 (label and manifest columns; == != < <= > >= in, and / or / not)"),
               crop: list[str] = Form([], description="per photo, in order: x,y,width,height in its pixels to "
                                      "search with that part of it, auto (the box model's box; the whole photo "
                                      "where it is not sure), or empty (the whole photo)"),
               qe: int | None = Form(None, description="alpha query expansion with this many nearest items "
                                     "(0: off; default: the server's --qe)")) -> dict[str, Any]:
        chosen = options(k, fuse, group_by, category, category_by, filter, qe)
        arrays = photos(image, boxes=crops(crop, len(image)))
        try:
            vectors = embedder.embed(arrays).numpy()
        except (cv2.error, ValueError, MemoryError) as e:
            raise HTTPException(415, "Not an image this server can prepare for search") from e
        return search_vectors(vectors, chosen)

    def crops(texts: list[str], count: int) -> list[Any]:
        if len(texts) > count:
            raise HTTPException(422, f"{len(texts)} crops for {count} photo(s)")
        if AUTO in texts and finder is None:
            raise HTTPException(422, "crop=auto needs a box model: start the server with --boxes FILE (python "
                                "train.py experiment=box makes one)")
        try:
            return [AUTO if t.strip() == AUTO else parse_box(t) if t.strip() else None for t in texts] + \
                [None] * (count - len(texts))
        except LookalikeError as e:
            raise HTTPException(422, str(e)) from e

    @app.post("/api/box", summary="Where the product is in a photo (the box model), to crop the search to it")
    def find_box(image: UploadFile = File(..., description="one photo")) -> dict[str, Any]:
        if finder is None:
            raise HTTPException(404, "This server has no box model (lookalike serve --boxes FILE)")
        array, _ = decoded(image, limit, side=None)
        [((x, y, w, h), confidence)] = finder.find([array])
        return {"box": [round(x), round(y), round(w), round(h)], "confidence": confidence,
                "found": confidence >= finder.min_confidence and w >= 2 and h >= 2}

    def photos(uploads: list[UploadFile], side: int = decode_side, boxes: list[Any] | None = None) -> list[Any]:
        if len(uploads) > MAX_PHOTOS:
            raise HTTPException(422, f"At most {MAX_PHOTOS} photos at once")
        arrays, budget = [], limit
        for upload, box in zip(uploads, boxes or [None] * len(uploads)):
            array, size = decoded(upload, budget, side, box)
            arrays.append(array)
            budget -= size
        return arrays

    @app.post("/api/feedback", summary="Mark a result of a photo search: the same product as the photo(s), or not")
    def mark(image: list[UploadFile] = File(..., description="the photo(s) searched with"),
             item: int = Form(..., description="the id of the result marked"),
             verdict: str = Form(..., description="same or different")) -> dict[str, Any]:
        if marks is None:
            raise HTTPException(404, "This server takes no feedback (started with --no-feedback)")
        if verdict not in VERDICTS:
            raise HTTPException(422, "verdict must be same or different")
        try:
            rows = marks.record(photos(image, PHOTO_SIDE), catalogue_item(item), verdict)
        except LookalikeError as e:  # the folder is full, or its lock is held too long
            log.error("feedback not kept in %s: %s", feedback, e)  # the log names the folder; the answer does not
            raise HTTPException(507, "The server cannot keep this mark now (its feedback folder is full, its disk is "
                                "full or it is busy): nothing of it was kept; its log says more") from e
        except OSError as e:
            log.error("cannot write feedback to %s: %s", feedback, e)
            raise HTTPException(507, "The server cannot write feedback: see its log") from e
        return {"recorded": len(rows), "item": item, "verdict": verdict}

    @app.get("/api/items/{item_id}", summary="One catalogue item")
    def get_item(item_id: int) -> dict[str, Any]:
        item = catalogue_item(item_id)
        return item_json(item["id"], item["label"], item["path"])

    @app.get("/api/items/{item_id}/similar", summary="The items most similar to a catalogue item (more like this)")
    def similar(item_id: int, k: int = 10, group_by: str = "", filter: str = "") -> dict[str, Any]:
        chosen = options(k, group_by=group_by, where=filter)
        try:
            vector = embedder.embed([catalogue_item(item_id)["path"]]).numpy()
        except LookalikeError as e:
            raise gone(item_id, e) from e
        return search_vectors(vector, chosen)

    def gone(item_id: int, e: Exception) -> HTTPException:
        log.warning("catalogue item %d: %s", item_id, e)  # the server's log names the file; the answer does not
        return HTTPException(410, f"The picture of catalogue item {item_id} is missing or unreadable on the server")

    @lru_cache(maxsize=4096)
    def thumbnail(item_id: int) -> bytes:
        picture = Image.fromarray(load_rgb(catalogue_item(item_id)["path"], min_side=THUMBNAIL))
        picture.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=85)
        return out.getvalue()

    @app.get("/api/items/{item_id}/image", summary="A catalogue item's picture (JPEG, at most 256 px)",
             response_class=Response)
    def get_image(item_id: int) -> Response:
        catalogue_item(item_id)
        try:
            return Response(thumbnail(item_id), media_type="image/jpeg",
                            headers={"Cache-Control": "public, max-age=3600"})
        except LookalikeError as e:
            raise gone(item_id, e) from e

    return app
