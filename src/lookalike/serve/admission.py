"""Admission of the page's work by its cost, fairly between clients (see :class:`Admission`).

A search's cost is the verification work it asks for: its photos times the candidates each is verified against
(a plain search costs its photos). Ordinary requests (at most :attr:`AdmissionOptions.light` of work: one photo at
the default verification) take one of ``slots`` places; costly ones share a budget of ``work`` units. In each lane
the waiting requests are served a client at a time in turn, each client's in the order it sent them, so six clients
sending eight-photo verified searches fill the costly lane while another client's one-photo search runs at once.
A request that cannot start within ``wait_s`` (or finds its lane's queue full) is answered 503 with a
``Retry-After`` estimated from the work ahead of it."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class AdmissionOptions:
    """``slots``: ordinary requests at once; ``work``: units of verification work (photos x candidates) of the
    costly requests at once (a larger request runs alone); ``light``: the most work an ordinary request asks for;
    ``wait_s``: the longest a request waits for its turn; ``queue``: requests waiting in each lane, at most
    ``per_client`` of them one client's."""

    slots: int = 4
    work: int = 800
    light: int = 100
    wait_s: float = 10.0
    queue: int = 12
    per_client: int = 2

    @property
    def requests(self) -> int:
        """The most requests the lanes hold at once, running or waiting."""
        return self.slots + self.work // max(1, self.light) + 2 * self.queue


class Busy(Exception):
    """A request refused for now; ``retry_after`` seconds is when trying again makes sense."""

    def __init__(self, retry_after: int, reason: str):
        super().__init__(reason)
        self.retry_after = retry_after


class _Lane:
    """``capacity`` units of work at once; waiting requests taken a client at a time in turn."""

    def __init__(self, name: str, capacity: int, options: AdmissionOptions):
        self.name, self.capacity, self.options = name, capacity, options
        self.used = 0
        self.waiting: OrderedDict[str, deque[list]] = OrderedDict()  # client -> its tickets [cost, admitted]
        self.seconds_per_unit = 0.01  # measured as requests finish
        self.lock = threading.Condition()

    def _queued(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def _retry_after(self, ahead: int) -> int:
        return max(1, min(60, math.ceil((ahead + self.used) * self.seconds_per_unit / self.capacity)))

    def _dispatch(self) -> None:
        """Admit waiting requests, a client at a time in turn, while the lane has room (one at least when idle)."""
        while self.waiting:
            client, queue = next(iter(self.waiting.items()))
            ticket = queue[0]
            if self.used and self.used + ticket[0] > self.capacity:
                return
            queue.popleft()
            ticket[1] = True
            self.used += ticket[0]
            del self.waiting[client]
            if queue:  # the client's next request goes to the back of the turn
                self.waiting[client] = queue
            self.lock.notify_all()

    @contextmanager
    def held(self, client: str, cost: int) -> Iterator[None]:
        cost = min(max(1, cost), self.capacity)
        with self.lock:
            mine = self.waiting.get(client)
            if self._queued() >= self.options.queue or (mine and len(mine) >= self.options.per_client):
                raise Busy(self._retry_after(self._queued() * cost), f"Busy ({self.name} searches queued): "
                           "try again later")
            ticket = [cost, False]
            self.waiting.setdefault(client, deque()).append(ticket)
            self._dispatch()
            deadline = time.monotonic() + self.options.wait_s
            while not ticket[1]:
                left = deadline - time.monotonic()
                if left <= 0:
                    queue = self.waiting[client]
                    queue.remove(ticket)
                    if not queue:
                        del self.waiting[client]
                    raise Busy(self._retry_after(self._queued() * cost), f"Busy ({self.name} searches take "
                               f"longer than {self.options.wait_s:g} s to start): try again later")
                self.lock.wait(left)
        started = time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                self.used -= cost
                spent = (time.monotonic() - started) / cost
                self.seconds_per_unit = 0.8 * self.seconds_per_unit + 0.2 * spent
                self._dispatch()


class Admission:
    """The page's two lanes: ordinary requests (``slots`` at once) and costly ones (``work`` units at once)."""

    def __init__(self, options: AdmissionOptions = AdmissionOptions()):
        self.options = options
        self.ordinary = _Lane("ordinary", options.slots, options)
        self.costly = _Lane("costly", options.work, options)

    @contextmanager
    def turn(self, client: str, work: int) -> Iterator[None]:
        """Hold a place for a request of ``client`` asking for ``work`` units; raises :class:`Busy`."""
        if work <= self.options.light:
            with self.ordinary.held(client, 1):
                yield
        else:
            with self.costly.held(client, work):
                yield
