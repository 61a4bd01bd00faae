"""The in-memory twin of the queue: one process, nothing persisted. For tests of what sits on
the queue (the scheduler) without an index on disk; it keeps every promise of JobQueue that does
not concern other processes (tests/queue/ runs the same contract against it). Ended jobs
stay in memory: fine for tests, not for a server."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

from ..errors import Overloaded
from ..store import Status, cancel_status
from .base import (
    LEASE_SECONDS,
    MAX_INTERRUPTIONS,
    Accept,
    Admission,
    Cancelled,
    InFlight,
    JobKey,
    Lease,
    LeaseLost,
    Outcome,
    Peek,
    QueueStats,
)


@dataclass
class _Entry:
    request: dict
    status: Status
    queued_at: float
    order: int
    ended_at: float | None = None
    outcome: Outcome | None = None
    builder: str | None = None
    token: int = 0
    expires: float = 0.0
    started_at: float = 0.0
    interruptions: int = 0
    cancel_reason: str | None = None
    log_file: str | None = None


class MemoryQueue:
    def __init__(self, max_interruptions: int = MAX_INTERRUPTIONS):
        self.max_interruptions = max_interruptions
        self._lock = threading.Condition()
        self._jobs: dict[JobKey, _Entry] = {}
        self._order = itertools.count()
        self._closed = False

    def peek(self, key: JobKey) -> Peek:
        with self._lock:
            entry = self._jobs.get(key)
            return Peek(None, None) if entry is None else Peek(entry.status, entry.ended_at)

    def submit(self, key: JobKey, request: dict, *, backlog: int | None = None,
               seen: Peek | None = None, now: float | None = None) -> Admission:
        now = time.time() if now is None else now
        with self._lock:
            entry = self._jobs.get(key)
            if entry is not None and not entry.status.finished:
                return Admission.JOINED
            if seen is not None and (entry.ended_at if entry else None) != seen.ended_at:
                return Admission.ENDED
            if backlog is not None and self._count(Status.QUEUED) >= backlog:
                raise Overloaded()
            token = entry.token if entry else 0
            self._jobs[key] = _Entry(dict(request), Status.QUEUED, now, next(self._order),
                                     token=token,
                                     interruptions=entry.interruptions if entry else 0)
            self._lock.notify_all()
            return Admission.QUEUED

    def take(self, builder: str, lease_seconds: float = LEASE_SECONDS,
             timeout: float | None = 0, exclude: Collection[JobKey] = (),
             now: float | None = None, accept: Accept | None = None) -> Lease | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                at = time.time() if now is None else now
                self._reap(at, every_lease=False)
                queued = [(e.queued_at, e.order, k) for k, e in self._jobs.items()
                          if e.status is Status.QUEUED and k not in exclude
                          and (accept is None or accept(e.request))]
                if queued:
                    key = min(queued)[2]
                    entry = self._jobs[key]
                    entry.status, entry.builder = Status.RUNNING, builder
                    entry.token += 1
                    entry.started_at, entry.expires = at, at + lease_seconds
                    entry.cancel_reason, entry.log_file = None, None
                    return Lease(key, builder, entry.token, dict(entry.request),
                                 entry.queued_at, at, entry.interruptions)
                expiries = [e.expires - time.time() for e in self._jobs.values()
                            if e.status is Status.RUNNING]
                waits = [w for w in (None if deadline is None else deadline - time.monotonic(),
                                     min(expiries) + 0.01 if expiries else None) if w is not None]
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                self._lock.wait(max(0.0, min(waits)) if waits else None)
            return None

    def lease_of(self, key: JobKey) -> Lease | None:
        with self._lock:
            e = self._jobs.get(key)
            if e is None or e.status is not Status.RUNNING or e.builder is None:
                return None
            return Lease(key, e.builder, e.token, dict(e.request), e.queued_at, e.started_at,
                         e.interruptions)

    def _held(self, lease: Lease) -> _Entry:
        entry = self._jobs.get(lease.key)
        if entry is None or entry.status is not Status.RUNNING or entry.builder != lease.builder \
                or entry.token != lease.token:
            raise LeaseLost(lease)
        return entry

    def heartbeat(self, lease: Lease, lease_seconds: float = LEASE_SECONDS,
                  now: float | None = None) -> str | None:
        with self._lock:
            entry = self._held(lease)
            entry.expires = (time.time() if now is None else now) + lease_seconds
            return entry.cancel_reason

    def wait_for_cancel(self, lease: Lease, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                entry = self._jobs.get(lease.key)
                if entry is None or entry.token != lease.token:
                    return None
                if entry.cancel_reason is not None or self._closed:
                    return entry.cancel_reason
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def finish(self, lease: Lease, outcome: Outcome, now: float | None = None) -> None:
        with self._lock:
            self._end(self._held(lease), outcome, now)

    def _end(self, entry: _Entry, outcome: Outcome, now: float | None) -> None:
        entry.status, entry.outcome = outcome.status, outcome
        entry.ended_at = time.time() if now is None else now
        entry.builder, entry.cancel_reason, entry.interruptions = None, None, 0
        self._lock.notify_all()

    def note_log(self, lease: Lease, log_file: str) -> None:
        with self._lock:
            self._held(lease).log_file = log_file

    def log_file(self, key: JobKey) -> str | None:
        with self._lock:
            entry = self._jobs.get(key)
            return entry.log_file if entry is not None and entry.status is Status.RUNNING else None

    def drop_builder(self, prefix: str) -> list[JobKey]:
        with self._lock:
            keys = [k for k, e in self._jobs.items() if e.status is Status.RUNNING
                    and e.builder is not None and e.builder.startswith(prefix)]
            for key in keys:
                self._jobs[key].expires = 0.0
            self._lock.notify_all()
            return keys

    def release(self, lease: Lease) -> None:
        with self._lock:
            entry = self._held(lease)
            entry.status, entry.builder = Status.QUEUED, None
            self._lock.notify_all()

    def cancel(self, key: JobKey, reason: str, info: dict | None = None,
               now: float | None = None) -> Cancelled:
        with self._lock:
            entry = self._jobs.get(key)
            if entry is None or entry.status.finished:
                return Cancelled.NOT_IN_FLIGHT
            if entry.status is Status.RUNNING:
                if entry.cancel_reason is None:
                    entry.cancel_reason = reason
                self._lock.notify_all()
                return Cancelled.REQUESTED
            self._end(entry, Outcome(cancel_status(reason), info, reason), now)
            return Cancelled.ENDED

    def wait(self, key: JobKey, timeout: float | None = None) -> Outcome | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                entry = self._jobs.get(key)
                if entry is not None and entry.status.finished:
                    return entry.outcome
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._lock.wait(remaining)

    def reap(self, now: float | None = None, every_lease: bool = False) -> list[JobKey]:
        with self._lock:
            return self._reap(time.time() if now is None else now, every_lease)

    def _reap(self, now: float, every_lease: bool) -> list[JobKey]:
        again = []
        for key, entry in self._jobs.items():
            if entry.status is not Status.RUNNING or not (every_lease or entry.expires < now):
                continue
            entry.interruptions += 1
            if entry.cancel_reason is not None:
                self._end(entry, Outcome(cancel_status(entry.cancel_reason), None,
                                         entry.cancel_reason), now)
            elif entry.interruptions >= self.max_interruptions:
                n = entry.interruptions
                self._end(entry, Outcome(Status.ABANDONED, None,
                                         f"interrupted {n} times in a row; not tried again"), now)
            else:
                entry.status, entry.builder = Status.QUEUED, None
                again.append(key)
        if again:
            self._lock.notify_all()
        return again

    def position(self, key: JobKey) -> int | None:
        with self._lock:
            entry = self._jobs.get(key)
            if entry is None or entry.status is not Status.QUEUED:
                return None
            mine = (entry.queued_at, entry.order)
            return sum(1 for e in self._jobs.values()
                       if e.status is Status.QUEUED and (e.queued_at, e.order) < mine)

    def jobs(self, limit: int = 1000) -> list[InFlight]:
        with self._lock:
            found = [(e.queued_at, e.order, k, e) for k, e in self._jobs.items()
                     if not e.status.finished]
            return [_in_flight(k, e) for _, _, k, e in sorted(found)[:limit]]

    def job(self, key: JobKey) -> InFlight | None:
        with self._lock:
            entry = self._jobs.get(key)
            return None if entry is None or entry.status.finished else _in_flight(key, entry)

    def stats(self) -> QueueStats:
        with self._lock:
            return QueueStats(self._count(Status.QUEUED), self._count(Status.RUNNING))

    def _count(self, status: Status) -> int:
        return sum(1 for e in self._jobs.values() if e.status is status)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()


def _in_flight(key: JobKey, e: _Entry) -> InFlight:
    running = e.status is Status.RUNNING
    return InFlight(key, e.status, dict(e.request), e.queued_at,
                    e.started_at if running else None, e.builder if running else None)
