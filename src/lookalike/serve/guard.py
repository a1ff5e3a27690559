"""The ASGI guard in front of the page: bodies read within bounds, a share of them per client, uploads that
stall or trickle cut at once, cross-site POSTs refused (see :class:`UploadGuard`). What a request may then cost
is the route's to admit (:mod:`lookalike.serve.admission`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

BODY_IDLE_S = 5.0  # a request body that sends nothing for this long is dropped (408), freeing its slot
BODY_GRACE_S = 2.0  # and one that, past this, has sent less than BODY_RATE bytes a second on average
BODY_RATE = 16 * 1024
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
    one of ``searching``) is refused (503 with Retry-After) when ``held`` requests are past the guard already; a
    POST waits for none of its body before it has one of ``slots`` places to read it in, at most half of them
    (one at least) a client address's, so a client that keeps reconnecting slow uploads never holds them all. Its
    body is read into memory only up to ``limit`` bytes (else 413, as soon as it passes the limit, whatever its
    Content-Length says) and only while it keeps coming: within :data:`BODY_IDLE_S` of silence, at
    :data:`BODY_RATE` bytes a second on average past :data:`BODY_GRACE_S`, and within :data:`BODY_TOTAL_S` in all
    (else 408: a stalled or trickling upload frees its place in seconds). The place is freed as soon as the body
    is read; what the request may then cost the route admits. A POST another site's page sends is refused (403),
    so no web page elsewhere can leave marks. So at most ``held`` bodies of at most ``limit`` bytes are held at
    once, and an upload over the limit is never read whole nor spooled."""

    def __init__(self, app: Callable, limit: int, slots: int, too_large: str, searching: tuple[str, ...] = (),
                 held: int | None = None):
        self.app, self.limit, self.slots, self.too_large = app, limit, slots, too_large
        self.searching, self.held = searching, held or 8 * slots
        self.reading: Counter[str] = Counter()  # bodies being read, per client address
        self.busy = 0  # requests past the guard (reading, waiting for their turn or searching)

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
        client = (scope.get("client") or ("",))[0]
        if self.busy >= self.held or not reading and (
                sum(self.reading.values()) >= self.slots or self.reading[client] >= max(1, self.slots // 2)):
            return await self._refuse(send, 503, "Busy: try again in a moment", [(b"retry-after", b"1")])
        self.busy += 1
        try:
            if reading:
                return await self.app(scope, receive, send)
            self.reading[client] += 1
            try:
                body = await asyncio.wait_for(self._body(receive), BODY_TOTAL_S)
            except (asyncio.TimeoutError, _Trickle):
                return await self._refuse(send, 408, "The upload stalled: send the whole request at once")
            except _TooLarge:
                return await self._refuse(send, 413, self.too_large)
            finally:
                self.reading[client] -= 1
                if not self.reading[client]:
                    del self.reading[client]
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
        """The whole request body, each part within :data:`BODY_IDLE_S` and all of it at :data:`BODY_RATE` on
        average past :data:`BODY_GRACE_S`; None if the client disconnected."""
        chunks, size, more, started = [], 0, True, time.monotonic()
        while more:
            due = started + max(BODY_GRACE_S, size / BODY_RATE) - time.monotonic()
            if due <= 0:
                raise _Trickle
            try:
                message = await asyncio.wait_for(receive(), min(BODY_IDLE_S, due))
            except asyncio.TimeoutError:
                raise _Trickle from None
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                raise _TooLarge
            more = message.get("more_body", False)
        return b"".join(chunks)


class _Trickle(Exception):
    """A request body stopped coming, or came slower than :data:`BODY_RATE`."""


class _TooLarge(Exception):
    """A request body passed the limit while it was read."""
