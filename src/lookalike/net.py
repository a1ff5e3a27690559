"""Whether a host can be reached, asked before a download so that offline machines get one clear message."""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def connection_error(url: str, timeout: float) -> OSError | None:
    """None if a TCP connection to the host (and port) of ``url`` opens within ``timeout`` seconds, else why not."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
        return None
    except OSError as e:
        return e
