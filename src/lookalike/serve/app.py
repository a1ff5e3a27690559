"""The search page and JSON API over a catalogue (``lookalike serve``): search with an uploaded photo.

The embedder and the catalogue load once at start (the catalogue file again whenever it changes). Safe by default:
it binds to loopback (and then answers only requests addressed to a loopback name, against DNS rebinding), refuses
uploads over the size limit while they arrive (413, chunked ones too) and drops those that stall or trickle (408),
reads a bounded share of uploads per client address, admits searches by their cost (verification work), fairly
between clients (:mod:`~lookalike.serve.admission`; 503 with Retry-After when a turn does not come in time), refuses POSTs from other
sites' pages (403), opens only the image formats users upload (415 for anything else), serves catalogue pictures
by item id only (never by path, and never names server paths) and never writes to the catalogue: "same product" /
"not the same" marks on results go to a feedback folder beside it (:mod:`lookalike.data.feedback`), when one is
given. A request goes: the guard (:mod:`~lookalike.serve.guard`), the route (:mod:`~lookalike.serve.routes`), the
page's state (:mod:`~lookalike.serve.page`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.data.images import return_large_buffers
from lookalike.errors import LookalikeError

FORM_ROOM = 64 * 1024  # bytes of multipart form around the uploaded files
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]  # the Host header a loopback-bound page accepts


def create_app(location: str | Path, options: Any = None) -> Any:
    """The FastAPI application over the catalogue at ``location`` (a ``.lkidx`` file, or with ``backend="milvus"``
    a Milvus file / URI), served as ``options`` (:class:`~lookalike.serve.page.PageOptions`) say."""
    try:
        from fastapi import FastAPI
        from starlette.middleware.trustedhost import TrustedHostMiddleware
    except ImportError as e:
        raise LookalikeError("lookalike serve needs the serve extra: pip install 'lookalike[serve]'") from e
    from lookalike.serve.guard import UploadGuard
    from lookalike.serve.page import Page, PageOptions
    from lookalike.serve.routes import add_routes

    options = options or PageOptions()
    return_large_buffers()  # a large upload's buffers go back to the system once answered
    page = Page(location, options)
    app = FastAPI(title="lookalike visual search", description=f"Search {page.live.index.count()} catalogue items "
                  "with a photo. Items are addressed by id.", version="1")
    admission = options.admission  # bodies being read, and the requests its lanes hold
    app.add_middleware(UploadGuard, limit=options.upload_limit + FORM_ROOM, slots=admission.slots,
                       held=admission.slots + admission.requests,
                       searching=("/similar",), too_large=f"Upload larger than {options.max_upload_mb:g} MB")
    if options.allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=options.allowed_hosts)
    add_routes(app, page)
    app.state.page = page
    return app
