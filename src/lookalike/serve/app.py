"""The search page and JSON API over a catalogue index (``lookalike serve``): search with an uploaded photo.

The embedder and the index load once at start. Safe by default: it binds to loopback, refuses uploads
over the size limit (413) and files that are not images (415), serves catalogue pictures by item id
only (never by path) and never writes to the index.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time

import io
from functools import lru_cache
from pathlib import Path
from typing import Any

from lookalike.data.images import load_rgb
from lookalike.data.transforms import eval_resize
from lookalike.errors import LookalikeError
from lookalike.inference.catalog import Index, SearchHit
from lookalike.inference.embedder_file import calibrated_threshold, embedder_from_payload

PAGE = Path(__file__).parent / "web" / "index.html"
THUMBNAIL = 256  # longest side of the pictures the page shows, in pixels
K_CHOICES = (5, 10, 20, 50)


def create_app(index_path: str | Path, embedder_path: str | Path | None = None, max_upload_mb: float = 10.0,
               max_k: int = 100):
    """The FastAPI application over one ``.lkidx`` index (and the embedder it was built with)."""
    try:
        from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
        from fastapi.responses import HTMLResponse, JSONResponse, Response
    except ImportError as e:
        raise LookalikeError("lookalike serve needs the serve extra: pip install 'lookalike[serve]'") from e
    from PIL import Image

    index = Index.load(index_path)
    payload = index.check_embedder(embedder_path or index.meta["embedder"])
    embedder = embedder_from_payload(payload).eval()
    threshold = calibrated_threshold(payload)
    decode_side = eval_resize(embedder.preprocessing)
    limit = int(max_upload_mb * 2**20)
    app = FastAPI(title="lookalike visual search", description=f"Search {len(index.items)} catalogue items "
                  "with a photo. Items are addressed by id.", version="1")

    def item_json(item: dict[str, Any]) -> dict[str, Any]:
        return {"id": item["id"], "label": item["label"], "name": Path(item["path"]).name,
                "image": f"/api/items/{item['id']}/image"}

    def answer(hits: list[SearchHit]) -> dict[str, Any]:
        return {"threshold": threshold, "results": [
            {**item_json(index.by_id[h.id]), "score": h.score,
             "match": None if threshold is None else h.score >= threshold} for h in hits]}

    def item(item_id: int) -> dict[str, Any]:
        if item_id not in index.by_id:
            raise HTTPException(404, f"No catalogue item has the id {item_id}")
        return index.by_id[item_id]

    def check_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise HTTPException(422, f"k must be between 1 and {max_k}")
        return k

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        if int(request.headers.get("content-length") or 0) > limit + 64 * 1024:  # room for the form around it
            return JSONResponse({"detail": f"Upload larger than {max_upload_mb:g} MB"}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE.read_text().replace("{{COUNT}}", str(len(index.items))).replace(
            "{{K_OPTIONS}}", "".join(f'<option{" selected" if k == 10 else ""}>{k}</option>' for k in K_CHOICES))

    @app.post("/api/search", summary="The catalogue items most similar to an uploaded photo")
    def search(image: UploadFile = File(..., description="a photo (JPEG, PNG, WebP, ...)"),
               k: int = Form(10, description="how many results")) -> dict[str, Any]:
        data = image.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"Upload larger than {max_upload_mb:g} MB")
        try:
            array = load_rgb(io.BytesIO(data), name=image.filename or "upload", min_side=decode_side)
        except LookalikeError as e:
            raise HTTPException(415, f"Not an image this server can read: {e}") from e
        return answer(index.search_vectors(embedder.embed([array]).numpy(), check_k(k))[0])

    @app.get("/api/items/{item_id}", summary="One catalogue item")
    def get_item(item_id: int) -> dict[str, Any]:
        return item_json(item(item_id))

    @app.get("/api/items/{item_id}/similar", summary="The items most similar to a catalogue item (more like this)")
    def similar(item_id: int, k: int = 10) -> dict[str, Any]:
        try:
            vector = embedder.embed([item(item_id)["path"]]).numpy()
        except LookalikeError as e:
            raise HTTPException(410, str(e)) from e
        return answer(index.search_vectors(vector, check_k(k))[0])

    @lru_cache(maxsize=4096)
    def thumbnail(item_id: int) -> bytes:
        picture = Image.fromarray(load_rgb(index.by_id[item_id]["path"], min_side=THUMBNAIL))
        picture.thumbnail((THUMBNAIL, THUMBNAIL))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=85)
        return out.getvalue()

    @app.get("/api/items/{item_id}/image", summary="A catalogue item's picture (JPEG, at most 256 px)",
             response_class=Response)
    def get_image(item_id: int) -> Response:
        item(item_id)
        try:
            return Response(thumbnail(item_id), media_type="image/jpeg",
                            headers={"Cache-Control": "public, max-age=3600"})
        except LookalikeError as e:
            raise HTTPException(410, str(e)) from e

    return app
