"""The embedded queue: one machine, any number of processes, no service to run.

The SQLite index is the queue (a job's row is its entry; WAL, `BEGIN IMMEDIATE` to claim work),
and a FIFO per process (wakeups.Bell) tells the other processes when to look again: a job ended,
a cancel was asked for, work arrived. Nothing waits by polling the database; a slow safety look
(SAFETY_LOOK seconds) only covers a wakeup lost to a reader that fell far behind.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Collection
from pathlib import Path

from ..errors import Overloaded, Unavailable
from ..store import BuildRow, Status, Store
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
from .wakeups import Bell, Wakeups, earliest, look_until, ring_others, sleep_until_woken

WORK = "work"


def _ended(key: JobKey) -> str:
    return f"end\t{key.project}\t{key.id}"


def _cancel(key: JobKey) -> str:
    return f"cancel\t{key.project}\t{key.id}"


class EmbeddedQueue:
    def __init__(self, store: Store, folder: Path | None = None,
                 max_interruptions: int = MAX_INTERRUPTIONS):
        self.store = store
        self.max_interruptions = max_interruptions
        self._wakeups = Wakeups()
        self._bell_folder = folder or store.path.parent / "queue-bell"
        # this process's FIFO and the thread that reads it, made when something here first
        # waits: a process that only submits and rings (mistryd's supervisor) starts no thread
        self._bell: Bell | None = None
        self._bell_lock = threading.Lock()

    def _ring(self, topic: str) -> None:
        self._wakeups.ring(topic)  # this process's waiters
        bell = self._bell
        ring_others(self._bell_folder, topic, mine=bell.name if bell is not None else None)

    def _listening(self, topic: str):
        """Wake-ups of `topic` from this process and every other one."""
        if self._bell is None:
            with self._bell_lock:
                if self._bell is None and not self._wakeups.closed:
                    self._bell = Bell(self._bell_folder, self._wakeups.ring)
        return self._wakeups.listening(topic)

    # --- the API tier's side ----------------------------------------------------------------

    def peek(self, key: JobKey) -> Peek:
        status, ended_at = self.store.queue_peek(key.project, key.id)
        return Peek(status, ended_at)

    def submit(self, key: JobKey, request: dict, *, backlog: int | None = None,
               seen: Peek | None = None, now: float | None = None) -> Admission:
        try:
            answer = self.store.queue_submit(
                key.project, key.id, request.get("group", ""), request.get("params", {}),
                bool(request.get("rebuild")), backlog,
                None if seen is None else (seen.status, seen.ended_at),
                time.time() if now is None else now)
        except (sqlite3.Error, OSError) as e:
            raise Unavailable(f"mistryd could not record the job in its index ({e}); nothing "
                              "was started, try again later") from None
        if answer == "full":
            raise Overloaded()
        if answer == "queued":
            self._ring(WORK)
        return Admission(answer)

    def cancel(self, key: JobKey, reason: str, info: dict | None = None,
               now: float | None = None) -> Cancelled:
        answer = Cancelled(self.store.queue_cancel(key.project, key.id, reason, info,
                                                   time.time() if now is None else now))
        if answer is Cancelled.ENDED:
            self._ring(_ended(key))
        elif answer is Cancelled.REQUESTED:
            self._ring(_cancel(key))
        return answer

    def wait(self, key: JobKey, timeout: float | None = None) -> Outcome | None:
        def ended() -> Outcome | None:
            found = self.store.queue_outcome(key.project, key.id)
            return None if found is None else Outcome(*found)

        return look_until(self._listening(_ended(key)), ended,
                          None if timeout is None else time.monotonic() + timeout,
                          lambda: self._wakeups.closed)

    # --- the builders' side -----------------------------------------------------------------

    def take(self, builder: str, lease_seconds: float = LEASE_SECONDS,
             timeout: float | None = 0, exclude: Collection[JobKey] = (),
             now: float | None = None, accept: Accept | None = None) -> Lease | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        excluded = {(k.project, k.id) for k in exclude}
        with self._listening(WORK) as woken:
            while True:
                woken.clear()
                if self._wakeups.closed:
                    return None
                at = time.time() if now is None else now
                self.reap(at)
                skip = excluded if accept is None else excluded | {
                    (row.project, row.id) for row, _ in self.store.queue_in_flight()
                    if row.status is Status.QUEUED and not accept(_request(row))}
                taken = self.store.queue_take(builder, lease_seconds, skip, at)
                if taken is not None:
                    row, token = taken
                    return Lease(JobKey(row.project, row.id), builder, token, _request(row),
                                 row.queued_at, at, row.interruptions)
                # nobody rings when a lease runs out: wake up for the first one that will
                expiry = self.store.queue_next_expiry()
                until = deadline if expiry is None else earliest(
                    deadline, time.monotonic() + max(0.0, expiry - time.time()) + 0.01)
                if not sleep_until_woken(woken, until) and deadline is not None \
                        and time.monotonic() >= deadline:
                    return None

    def heartbeat(self, lease: Lease, lease_seconds: float = LEASE_SECONDS,
                  now: float | None = None) -> str | None:
        held, cancel_reason = self.store.queue_heartbeat(
            lease.key.project, lease.key.id, lease.builder, lease.token, lease_seconds,
            time.time() if now is None else now)
        if not held:
            raise LeaseLost(lease)
        return cancel_reason

    def wait_for_cancel(self, lease: Lease, timeout: float) -> str | None:
        return look_until(self._listening(_cancel(lease.key)),
                          lambda: self.store.queue_cancel_reason(lease.key.project, lease.key.id,
                                                                 lease.builder, lease.token),
                          time.monotonic() + timeout, lambda: self._wakeups.closed)

    def finish(self, lease: Lease, outcome: Outcome, now: float | None = None) -> None:
        info = outcome.info if outcome.info is not None else {}
        if not self.store.queue_finish(lease.key.project, lease.key.id, lease.builder,
                                       lease.token, outcome.status, info, outcome.reason,
                                       time.time() if now is None else now):
            raise LeaseLost(lease)
        self._ring(_ended(lease.key))

    def note_log(self, lease: Lease, log_file: str) -> None:
        if not self.store.queue_note_log(lease.key.project, lease.key.id, lease.builder,
                                         lease.token, log_file):
            raise LeaseLost(lease)

    def lease_of(self, key: JobKey) -> Lease | None:
        found = self.store.queue_lease(key.project, key.id)
        if found is None:
            return None
        row, builder, token = found
        return Lease(key, builder, token, _request(row), row.queued_at,
                     row.started_at or row.queued_at, row.interruptions)

    def log_file(self, key: JobKey) -> str | None:
        return self.store.queue_log_file(key.project, key.id)

    def drop_builder(self, prefix: str) -> list[JobKey]:
        keys = [JobKey(p, i) for p, i in self.store.queue_expire_leases(prefix)]
        if keys:
            self._ring(WORK)
        return keys

    def release(self, lease: Lease) -> None:
        if not self.store.queue_release(lease.key.project, lease.key.id, lease.builder,
                                        lease.token):
            raise LeaseLost(lease)
        self._ring(WORK)

    def reap(self, now: float | None = None, every_lease: bool = False) -> list[JobKey]:
        moved = self.store.queue_reap(time.time() if now is None else now, every_lease,
                                      self.max_interruptions)
        for project, build_id, to in moved:
            if to is not Status.QUEUED:
                self._ring(_ended(JobKey(project, build_id)))
        if any(to is Status.QUEUED for _, _, to in moved):
            self._ring(WORK)
        return [JobKey(p, i) for p, i, to in moved if to is Status.QUEUED]

    # --- questions ----------------------------------------------------------------------------

    def position(self, key: JobKey) -> int | None:
        return self.store.queue_position(key.project, key.id)

    def jobs(self, limit: int = 1000) -> list[InFlight]:
        return [_in_flight(row, owner) for row, owner in self.store.queue_in_flight(limit=limit)]

    def job(self, key: JobKey) -> InFlight | None:
        found = self.store.queue_in_flight(key.project, key.id)
        return _in_flight(*found[0]) if found else None

    def stats(self) -> QueueStats:
        return QueueStats(*self.store.queue_counts())

    def close(self) -> None:
        with self._bell_lock:
            self._wakeups.close()
            if self._bell is not None:
                self._bell.close()


def _in_flight(row: BuildRow, owner: str | None) -> InFlight:
    return InFlight(JobKey(row.project, row.id), row.status, _request(row), row.queued_at,
                    row.started_at, owner if row.status is Status.RUNNING else None)


def _request(row: BuildRow) -> dict:
    return {"project": row.project, "params": {**row.params, **row.opaque}, "group": row.group,
            "rebuild": row.rebuild}
