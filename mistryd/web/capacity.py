"""The request threads' budget: how many of them long requests may hold at once.

waitress serves every request from a fixed pool of `http_threads` threads. A request that waits
for a build (a synchronous `POST /jobs`) or follows a log (the SSE stream of every `mistry build`
and every open build page) holds its thread for as long as the build runs; an artifact manifest
or `.tar` holds one for as long as the transfer takes. Without a bound, enough of them take every
thread, and cache hits, `/healthz`, the pages and cancel all stall behind them. So each kind has
a pool of slots, and a reserve of threads is kept for short requests: beyond its pool a long
request is answered 503 with Retry-After at once, and never queues for a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import current_app
from prometheus_client import Counter, Gauge

from ..errors import Unavailable
from ..metrics import Metrics

RETRY_AFTER = 2  # seconds: long requests end often, and a retry is cheap
_EXTENSION = "mistryd.capacity"


@dataclass(frozen=True)
class Budget:
    """How `threads` request threads are shared: `artifacts` for manifests and tar streams,
    `waits` for build waiters and log followers, and at least `reserve` for everything else."""

    threads: int
    artifacts: int
    waits: int
    reserve: int

    @classmethod
    def of(cls, threads: int) -> Budget:
        artifacts = max(1, min(16, threads // 4))
        reserve = max(4, threads // 8)
        waits = max(1, threads - artifacts - reserve)
        return cls(threads, artifacts, waits, threads - artifacts - waits)


class Pool:
    """A bounded number of slots of one kind, with its figures in /metrics."""

    def __init__(self, kind: str, size: int, in_use: Gauge, refused: Counter, busy_message: str):
        self.kind, self.size = kind, size
        self._slots = threading.BoundedSemaphore(size)
        self._in_use = in_use.labels(kind)
        self._refused = refused.labels(kind)
        self._busy_message = busy_message

    def take(self) -> Callable[[], None]:
        """Take a slot or raise Unavailable (503 + Retry-After). Returns the function that gives
        it back; calling that more than once gives it back once."""
        if not self._slots.acquire(blocking=False):
            self._refused.inc()
            raise Unavailable(f"{self._busy_message} ({self.size} at once); try again in "
                              f"{RETRY_AFTER} s", retry_after=RETRY_AFTER)
        self._in_use.inc()
        lock = threading.Lock()
        held = [True]

        def give_back() -> None:
            with lock:
                if not held[0]:
                    return
                held[0] = False
            self._in_use.dec()
            self._slots.release()

        return give_back

    @contextmanager
    def slot(self) -> Iterator[None]:
        give_back = self.take()
        try:
            yield
        finally:
            give_back()


class Capacity:
    """The pools of one server."""

    def __init__(self, threads: int, metrics: Metrics):
        self.budget = Budget.of(threads)
        in_use, refused = metrics.request_slots_in_use, metrics.request_slots_refused
        self.waits = Pool("waits", self.budget.waits, in_use, refused,
                          "too many requests are waiting for builds or following logs")
        self.artifacts = Pool("artifacts", self.budget.artifacts, in_use, refused,
                              "too many artifact manifests and .tar downloads at once")
        for pool in (self.waits, self.artifacts):
            metrics.request_slots.labels(pool.kind).set(pool.size)


def init_app(app, threads: int, metrics: Metrics) -> None:
    app.extensions[_EXTENSION] = Capacity(threads, metrics)


def capacity() -> Capacity:
    return current_app.extensions[_EXTENSION]
