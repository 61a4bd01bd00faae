"""The queue: coalescing, a bounded backlog, `job_concurrency` workers.

The scheduler decides what runs when; the builder executes. Identical requests (same job id) in
flight share one Flight: waiters block on its event (no polling, no worker slot held) and all get
the same outcome, failures included.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .builder import Job
from .errors import Overloaded, ShuttingDown
from .jobs import BuildInfo


def may_queue(queued: int, backlog: int) -> bool:
    """Admission: a new build may wait in the queue while fewer than `backlog` are waiting."""
    return queued < backlog


@dataclass
class Flight:
    job: Job
    done: threading.Event = field(default_factory=threading.Event)
    result: BuildInfo | None = None
    running: bool = False

    def wait(self, timeout: float | None = None) -> BuildInfo | None:
        self.done.wait(timeout)
        return self.result


@dataclass
class Ticket:
    flight: Flight
    coalesced: bool


class Scheduler:
    def __init__(self, run: Callable[[Job], BuildInfo], concurrency: int, backlog: int,
                 on_change: Callable[[int, int], None] | None = None,
                 on_queue: Callable[[Job], None] | None = None):
        self._run = run
        self.concurrency = concurrency
        self.backlog = backlog
        self._flights: dict[tuple[str, str], Flight] = {}
        self._queue: queue.Queue[Flight | None] = queue.Queue()
        self._queued = 0
        self._running = 0
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda queued, running: None)
        self._on_queue = on_queue or (lambda job: None)
        self._workers: list[threading.Thread] = []
        self._closed = False

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work, name=f"mistryd-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def submit(self, job: Job, cached: Callable[[], BuildInfo | None] | None = None,
               force: bool = False) -> Ticket | BuildInfo:
        """Join the identical build in flight, or queue a new one. `cached` is asked again under
        the lock (a build may have finished since the caller looked) unless `force`."""
        key = (job.project, job.id)
        with self._lock:
            if self._closed:
                raise ShuttingDown()
            flight = self._flights.get(key)
            if flight is not None:
                return Ticket(flight, coalesced=True)
            if not force and cached is not None:
                hit = cached()
                if hit is not None:
                    return hit
            if not may_queue(self._queued, self.backlog):
                raise Overloaded()
            flight = Flight(job)
            self._flights[key] = flight
            self._queued += 1
            self._changed()
            self._on_queue(job)  # recorded before any worker can see it
        self._queue.put(flight)
        return Ticket(flight, coalesced=False)

    def in_flight(self, project: str, build_id: str) -> Flight | None:
        return self._flights.get((project, build_id))

    def flights(self) -> list[Flight]:
        with self._lock:
            return list(self._flights.values())

    def stop(self, timeout: float | None = None) -> None:
        with self._lock:
            self._closed = True
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join(timeout)

    def _work(self) -> None:
        while True:
            flight = self._queue.get()
            if flight is None:
                return
            with self._lock:
                self._queued -= 1
                self._running += 1
                flight.running = True
                self._changed()
            result: BuildInfo | None = None
            try:
                result = self._run(flight.job)
            finally:
                with self._lock:
                    self._running -= 1
                    self._flights.pop((flight.job.project, flight.job.id), None)
                    flight.result = result
                    self._changed()
                flight.done.set()

    def _changed(self) -> None:
        self._on_change(self._queued, self._running)
