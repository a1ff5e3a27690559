"""The ASGI guard in front of the page: slots, body limits read as the body arrives, stalled uploads, cross-site
POSTs (see :class:`UploadGuard`)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

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
