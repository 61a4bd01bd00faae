"""The request threads' budget: how many of them long requests may hold at once.

waitress serves every request from a fixed pool of `http_threads` threads. A request that waits
for a build (a synchronous `POST /jobs`) or follows a log (the SSE stream of every `mistry build`
and every open build page) holds its thread for as long as the build runs; an artifact manifest
or `.tar` holds one for as long as the transfer takes. Without a bound, enough of them take every
thread, and cache hits, `/healthz`, the pages and cancel all stall behind them. So each kind has
a pool of slots, and a reserve of threads is kept for short requests: beyond its pool a long
request is answered 503 with Retry-After at once, and never queues for a thread.

With several API processes, each keeps its own threads' reserve, and the pools' sizes bound the
whole server: a small file shared by the API processes (SharedCounts) holds how many slots of each
kind every process has taken, so long requests spread over the processes never add up to more.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flask import current_app
from prometheus_client import Counter, Gauge

from ..errors import Unavailable
from ..metrics import Metrics
from .threads import step_aside

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


KINDS = ("waits", "artifacts")
SHARED_ROWS = 256  # API processes alive at once, old ones draining after reloads included
_CELL = 8  # one signed 64-bit count


class SharedCounts:
    """How many slots of each kind each API process holds, in a file they all map: one row per
    process (given by the supervisor, cleared when that process ends), changed under `flock`, so
    a process that dies mid-change leaves no lock behind."""

    def __init__(self, path: Path, row: int):
        self.row = row
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = SHARED_ROWS * len(KINDS) * _CELL
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._cells = memoryview(self._map).cast("q")

    @classmethod
    def clear(cls, path: Path, row: int | None = None) -> None:
        """Zero one row (a process that ended) or every row (a server starting)."""
        counts = cls(path, row or 0)
        try:
            with counts._locked():
                rows = range(SHARED_ROWS) if row is None else (row,)
                for r in rows:
                    for k in range(len(KINDS)):
                        counts._cells[r * len(KINDS) + k] = 0
        finally:
            counts.close()

    def take(self, kind: str, limit: int) -> bool:
        k = KINDS.index(kind)
        with self._locked():
            if sum(self._cells[r * len(KINDS) + k] for r in range(SHARED_ROWS)) >= limit:
                return False
            self._cells[self.row * len(KINDS) + k] += 1
            return True

    def give_back(self, kind: str) -> None:
        k = KINDS.index(kind)
        with self._locked():
            self._cells[self.row * len(KINDS) + k] -= 1

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._cells.release()
        self._map.close()
        os.close(self._fd)


class Pool:
    """A bounded number of slots of one kind, with its figures in /metrics; with `shared`
    counts, bounded for every API process of the server together."""

    def __init__(self, kind: str, size: int, in_use: Gauge, refused: Counter, busy_message: str,
                 shared: SharedCounts | None = None):
        self.kind, self.size = kind, size
        self._slots = threading.BoundedSemaphore(size)
        self._shared = shared
        self._in_use = in_use.labels(kind)
        self._refused = refused.labels(kind)
        self._busy_message = busy_message

    def take(self) -> Callable[[], None]:
        """Take a slot or raise Unavailable (503 + Retry-After). Returns the function that gives
        it back; calling that more than once gives it back once. The request is a long one from
        here: it steps aside from the requests that run at once (web/threads.py)."""
        if not self._slots.acquire(blocking=False):
            self._refuse()
        if self._shared is not None and not self._shared.take(self.kind, self.size):
            self._slots.release()
            self._refuse()
        step_aside()
        self._in_use.inc()
        lock = threading.Lock()
        held = [True]

        def give_back() -> None:
            with lock:
                if not held[0]:
                    return
                held[0] = False
            self._in_use.dec()
            if self._shared is not None:
                self._shared.give_back(self.kind)
            self._slots.release()

        return give_back

    def _refuse(self) -> None:
        self._refused.inc()
        raise Unavailable(f"{self._busy_message} ({self.size} at once); try again in "
                          f"{RETRY_AFTER} s", retry_after=RETRY_AFTER)

    @contextmanager
    def slot(self) -> Iterator[None]:
        give_back = self.take()
        try:
            yield
        finally:
            give_back()


class Capacity:
    """The pools of one server."""

    def __init__(self, threads: int, metrics: Metrics, shared: SharedCounts | None = None):
        self.budget = Budget.of(threads)
        in_use, refused = metrics.request_slots_in_use, metrics.request_slots_refused
        self.waits = Pool("waits", self.budget.waits, in_use, refused,
                          "too many requests are waiting for builds or following logs", shared)
        self.artifacts = Pool("artifacts", self.budget.artifacts, in_use, refused,
                              "too many artifact manifests and .tar downloads at once", shared)
        for pool in (self.waits, self.artifacts):
            metrics.request_slots.labels(pool.kind).set(pool.size)


def init_app(app, threads: int, metrics: Metrics, shared: SharedCounts | None = None) -> None:
    app.extensions[_EXTENSION] = Capacity(threads, metrics, shared)


def capacity() -> Capacity:
    return current_app.extensions[_EXTENSION]
