"""The page's routes: each maps a request onto :class:`~lookalike.serve.page.Page` (its parameters are the API's
documentation at /docs)."""
# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time

from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from lookalike.serve.page import Page

PAGE = Path(__file__).parent / "web" / "index.html"
K_CHOICES = (5, 10, 20, 50)


def add_routes(app: FastAPI, page: Page) -> None:
    """The page, the search, the box, marks and the catalogue items, over ``page``."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> str:
        return PAGE.read_text().replace("{{COUNT}}", str(page.live.index.count())).replace(
            "{{FEEDBACK}}", "true" if page.marks else "false").replace(
            "{{BOXES}}", "true" if page.finder else "false").replace(
            "{{K_OPTIONS}}", "".join(f'<option{" selected" if k == 10 else ""}>{k}</option>' for k in K_CHOICES))

    @app.post("/api/search", summary="The catalogue items most similar to an uploaded photo (or to several photos "
              "of one item, fused)")
    def search(request: Request, image: list[UploadFile] = File(..., description="one photo, or up to 8 of one item (JPEG, PNG, WebP, "
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
                                     "(0: off; default: the server's --qe)"),
               verify: int | None = Form(None, description="verify this many candidates of the embedding and of the "
                                         "local descriptors' votes against the whole photo (0: off; default: 50 "
                                         "where the catalogue keeps local features); results then carry verified, "
                                         "inliers, quad (the picture's corners in the photo, as fractions of its "
                                         "width and height) and lookalike_of (the id of the result this one is a "
                                         "look-alike of: it shares that one's print but its colours or words "
                                         "disagree with the photo)")) -> dict[str, Any]:
        chosen = page.search_options(k, fuse, group_by, category, category_by, filter, qe, verify)
        boxes = page.crops(crop, len(image))
        with page.turn(_client(request), page.work(chosen, len(image))):
            searched, wholes = page.photos(image, boxes=boxes)
            return page.search(page.embed(searched), chosen, wholes)

    @app.post("/api/box", summary="Where the product is in a photo (the box model), to crop the search to it")
    def find_box(request: Request, image: UploadFile = File(..., description="one photo")) -> dict[str, Any]:
        with page.turn(_client(request)):
            return page.find_box(image)

    @app.post("/api/feedback", summary="Mark a result of a photo search: the same product as the photo(s), or not")
    def mark(request: Request, image: list[UploadFile] = File(..., description="the photo(s) searched with"),
             item: int = Form(..., description="the id of the result marked"),
             verdict: str = Form(..., description="same or different")) -> dict[str, Any]:
        with page.turn(_client(request), len(image)):
            return page.mark(image, item, verdict)

    @app.get("/api/items/{item_id}", summary="One catalogue item")
    def get_item(item_id: int) -> dict[str, Any]:
        item = page.item(item_id)
        return page.item_json(item["id"], item["label"], item["path"])

    @app.get("/api/items/{item_id}/similar", summary="The items most similar to a catalogue item (more like this)")
    def similar(request: Request, item_id: int, k: int = 10, group_by: str = "", filter: str = "") -> dict[str, Any]:
        chosen = page.search_options(k, group_by=group_by, where=filter)
        with page.turn(_client(request)):
            return page.similar(item_id, chosen)

    @app.get("/api/items/{item_id}/image", summary="A catalogue item's picture (JPEG, at most 256 px)",
             response_class=Response)
    def get_image(item_id: int) -> Response:
        return Response(page.picture(item_id), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})


def _client(request: Request) -> str:
    """The address a request came from: the unit of fair shares (one address behind a proxy is one client)."""
    return request.client.host if request.client else ""
