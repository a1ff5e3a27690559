"""uvicorn's HTTP/1.1 protocol with a deadline for a request's headers. uvicorn waits as long as a client likes for
the headers of a request (only idle keep-alive connections time out), so connections that send a few header bytes
now and then would pile up without end; here a request whose headers are not complete within
:data:`HEADERS_S` of its first byte (or of the connection) is answered 408 and its connection closed. Bodies have
their own deadline in the guard (:mod:`lookalike.serve.guard`)."""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADERS_S = 10.0
LATE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderDeadline(H11Protocol):
    """:class:`H11Protocol` that closes a connection whose request headers are late (see the module's text)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for a request's headers
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(HEADERS_S, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE and not self.transport.is_closing():
            self.transport.write(LATE)
            self.transport.close()
