"""The queue: coalescing, a bounded backlog, `job_concurrency` workers, cancellation and a
graceful stop.

The scheduler decides what runs when; the builder executes. Identical requests (same job id) in
flight share one Flight: waiters block on its event (no polling, no worker slot held) and all get
the same outcome, failures included.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .builder import Job
from .errors import Overloaded, ShuttingDown, Unavailable
from .jobs import BuildInfo

log = logging.getLogger("mistryd")

Cached = TypeVar("Cached")  # what a cache answers instead of a build (the server's: a Hit)


def may_queue(queued: int, backlog: int) -> bool:
    """Admission: a new build may wait in the queue while fewer than `backlog` are waiting."""
    return queued < backlog


@dataclass
class Flight:
    job: Job
    done: threading.Event = field(default_factory=threading.Event)
    result: BuildInfo | None = None
    running: bool = False
    cancelled: bool = False  # cancelled while queued: the worker that takes it skips it
    error: Exception | None = None  # it could not be admitted (its record was not written)

    def wait(self, timeout: float | None = None) -> BuildInfo | None:
        """The outcome; None when the server stopped first. Raises the admission error."""
        self.done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class Ticket:
    flight: Flight
    coalesced: bool


class Scheduler:
    def __init__(self, run: Callable[[Job], BuildInfo], concurrency: int, backlog: int,
                 on_change: Callable[[int, int], None] | None = None,
                 on_queue: Callable[[Job], None] | None = None,
                 on_cancel_queued: Callable[[Job], BuildInfo] | None = None,
                 blocked_on: Callable[[Job], threading.Event | None] | None = None):
        self._run = run
        self.concurrency = concurrency
        self.backlog = backlog
        self._flights: dict[tuple[str, str], Flight] = {}
        self._queue: queue.Queue[Flight | None] = queue.Queue()
        self._queued = 0
        self._running = 0
        self._finished = 0  # builds ended so far: admission asks the cache again when it moved
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._on_change = on_change or (lambda queued, running: None)
        self._on_queue = on_queue or (lambda job: None)
        self._on_cancel_queued = on_cancel_queued
        # what a job would wait for before it can use a worker (another job building its image):
        # such a job is parked until then instead of holding a worker while it waits
        self._blocked_on = blocked_on or (lambda job: None)
        self._workers: list[threading.Thread] = []
        self._closed = False

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work, name=f"mistryd-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def submit(self, job: Job, cached: Callable[[], Cached | None] | None = None,
               force: bool = False, admit: bool = False) -> Ticket | Cached:
        """Join the identical build in flight, or queue a new one. Unless `force`, `cached` is
        asked first (a build may have finished since the caller looked); what it answers, if
        anything, is returned instead of a Ticket. `admit` skips the backlog bound (jobs
        re-queued at start-up were admitted before).
        `cached` reads files and may write to the index, so it runs outside the lock; a build
        that finishes meanwhile (maybe this very one) makes it ask again, so a finished build is
        never built twice."""
        key = (job.project, job.id)
        while True:
            with self._lock:
                ticket, finished = self._join(key), self._finished
            if ticket is not None:
                return ticket
            if not force and cached is not None:
                hit = cached()
                if hit is not None:
                    return hit
            with self._lock:
                ticket = self._join(key)
                if ticket is not None:
                    return ticket
                if self._finished != finished:
                    continue  # the cache may hold it now: ask again
                if not admit and not may_queue(self._queued, self.backlog):
                    raise Overloaded()
                flight = Flight(job)
                self._flights[key] = flight  # identical requests join it from now on
                self._queued += 1
                break
        # Admission is transactional: the job is recorded before any worker can see it, and if
        # the record cannot be written (a busy or full disk), nothing stays registered and
        # whoever joined meanwhile gets the same error.
        try:
            self._on_queue(job)
        except Exception as e:
            with self._lock:
                self._flights.pop(key, None)
                self._queued -= 1
            flight.error = e
            flight.done.set()
            raise
        with self._lock:
            cancelled_meanwhile = flight.cancelled
            self._changed()
        if cancelled_meanwhile:  # its cancel was recorded before our "queued": record it again
            self._record_cancel(flight)
            return Ticket(flight, coalesced=False)
        self._queue.put(flight)
        return Ticket(flight, coalesced=False)

    def _join(self, key: tuple[str, str]) -> Ticket | None:
        """The ticket of the identical build in flight, if there is one (under the lock)."""
        if self._closed:
            raise ShuttingDown()
        flight = self._flights.get(key)
        return Ticket(flight, coalesced=True) if flight is not None else None

    def cancel(self, project: str, build_id: str, reason: str) -> Flight | None:
        """Cancel a build in flight: a queued one ends at once, a running one is stopped by its
        builder (the container is killed). None when no such build is in flight."""
        with self._lock:
            flight = self._flights.get((project, build_id))
            if flight is None:
                return None
            flight.job.request_cancel(reason)
            if flight.running or flight.cancelled:
                return flight
            flight.cancelled = True
            self._flights.pop((project, build_id))
            self._queued -= 1
            self._changed()
        self._record_cancel(flight)
        return flight

    def _record_cancel(self, flight: Flight) -> None:
        """A queued flight was cancelled: record it, and answer its waiters whatever happens."""
        try:
            if self._on_cancel_queued is not None:
                flight.result = self._on_cancel_queued(flight.job)
        except Exception as e:
            log.exception("mistryd: could not record the cancel of %s/%s", flight.job.project,
                          flight.job.id)
            flight.error = Unavailable(f"the cancel was not recorded ({e}); it is cancelled "
                                       "in this process only")
        finally:
            flight.done.set()

    def in_flight(self, project: str, build_id: str) -> Flight | None:
        return self._flights.get((project, build_id))

    def flights(self) -> list[Flight]:
        with self._lock:
            return list(self._flights.values())

    def stop(self, grace: float = 0, reason: str = "mistryd stopped") -> None:
        """Take no new work; give running builds `grace` seconds, then cancel them. Queued jobs
        stay queued in the store (they run after a restart); their waiters get no result."""
        with self._lock:
            self._closed = True
            deadline = time.monotonic() + grace
            while self._running and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            leftovers = list(self._flights.values())
        for flight in leftovers:
            if flight.running:
                flight.job.request_cancel(f"{reason} (after a grace period of {grace:g}s)")
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join(30)
        for flight in leftovers:
            if not flight.running:
                flight.done.set()  # result None: the waiter answers "shutting down"

    def _work(self) -> None:
        while True:
            flight = self._queue.get()
            if flight is None:
                return
            with self._lock:
                if flight.cancelled:
                    continue
                if self._closed:  # stopping: leave it queued in the store for the next start
                    continue
            if (blocker := self._blocked_on(flight.job)) is not None:
                self._park(flight, blocker)
                continue
            with self._lock:
                if flight.cancelled or self._closed:
                    continue
                self._queued -= 1
                self._running += 1
                flight.running = True
                self._changed()
            result: BuildInfo | None = None
            try:
                result = self._run(flight.job)
            except Exception:  # the builder records its own failures; this is a last guard
                log.exception("mistryd: worker error on %s/%s", flight.job.project, flight.job.id)
            finally:
                with self._lock:
                    self._running -= 1
                    self._flights.pop((flight.job.project, flight.job.id), None)
                    self._finished += 1
                    flight.result = result
                    self._changed()
                    self._idle.notify_all()
                flight.done.set()

    def _park(self, flight: Flight, blocker: threading.Event) -> None:
        """Queue `flight` again once `blocker` is set; it stays queued meanwhile (a cancel ends
        it as usual), and no worker waits for it."""

        def requeue() -> None:
            blocker.wait()
            self._queue.put(flight)

        threading.Thread(target=requeue, daemon=True,
                         name=f"mistryd-parked-{flight.job.id[:12]}").start()

    def _changed(self) -> None:
        self._on_change(self._queued, self._running)
