"""The queue's interface: what the scheduler, the builders and the API tier may ask of a queue,
whatever keeps it (the embedded SQLite backend on one machine, Redis for many).

A job is known by its build key (project, build id): submitting an identical request joins the
job in flight instead of queueing a second one. A builder takes a job with a *lease* that it
renews by heartbeats; a job whose builder stopped heartbeating goes back to the queue, and a finish
from a builder that lost its lease is refused, so nothing finishes twice. See docs/queue.md.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..store import Status

LEASE_SECONDS = 30.0  # a builder that has not heartbeaten for this long has lost its job
MAX_INTERRUPTIONS = 3  # a job whose lease was lost this often in a row is abandoned, not retried


# which queued jobs a builder takes, by their request (labels, cache locality: distributed.md)
Accept = Callable[[dict], bool]


@dataclass(frozen=True, order=True)
class JobKey:
    project: str
    id: str

    def __str__(self) -> str:  # the job id in an engine that wants one string (Redis)
        return f"{self.project}/{self.id}"


@dataclass(frozen=True)
class Lease:
    """One take of a job by one builder: `token` grows with every take of the job, so a builder
    that lost its lease can be told apart from the one that holds it now."""

    key: JobKey
    builder: str
    token: int
    request: dict  # what was asked: project, params (opaque ones too), group, rebuild
    queued_at: float
    started_at: float
    interruptions: int  # earlier takes of this job whose builder was lost, in a row


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its status, its BuildInfo record (None for a job cancelled before it
    ran, when the canceller gave none) and the reason for the index."""

    status: Status
    info: dict | None = None
    reason: str = ""


@dataclass(frozen=True)
class Peek:
    """What the queue holds for a key right now: its status (None: never queued) and when it
    last ended (None: never)."""

    status: Status | None
    ended_at: float | None

    @property
    def in_flight(self) -> bool:
        return self.status is not None and not self.status.finished


def builder_of(lease_holder: str | None) -> str | None:
    """The builder a lease holder belongs to: its name without the worker's number (`hpc-1-0`
    is a worker of builder `hpc-1`)."""
    return None if lease_holder is None else lease_holder.rsplit("-", 1)[0]


class Admission(StrEnum):
    QUEUED = "queued"  # a new job
    JOINED = "joined"  # the identical job was in flight: the caller waits for it
    ENDED = "ended"  # the job ended since the caller's peek: ask the cache again


class Cancelled(StrEnum):
    ENDED = "ended"  # it was queued: it ended at once, cancelled
    REQUESTED = "requested"  # it is running: its builder is told and stops it
    NOT_IN_FLIGHT = "not-in-flight"  # unknown, or already ended


@dataclass(frozen=True)
class InFlight:
    """A job queued or running, as any process may list it: what was asked (`request`, opaque
    params included: the job may have to be made from it), and who holds it."""

    key: JobKey
    status: Status  # QUEUED or RUNNING
    request: dict
    queued_at: float
    started_at: float | None
    builder: str | None  # the lease holder of a running job


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int


class LeaseLost(Exception):
    """The builder's lease on a job was lost (it stopped heartbeating and the job went back to
    the queue, or the job ended otherwise): its heartbeat and its finish are refused."""

    def __init__(self, lease: Lease):
        super().__init__(f"builder {lease.builder!r} no longer holds job {lease.key} "
                         f"(take {lease.token})")
        self.lease = lease


class JobQueue(Protocol):
    """Every backend keeps these promises (tests/queue/ checks each one against each backend).

    Times (`now`) are seconds since the epoch and may be passed in, so tests need no sleeps."""

    def peek(self, key: JobKey) -> Peek:
        """The key's state, for a caller about to ask the cache."""
        ...

    def submit(self, key: JobKey, request: dict, *, backlog: int | None = None,
               seen: Peek | None = None, now: float | None = None) -> Admission:
        """Join the job in flight with this key, or queue it. `backlog`: refuse with errors.Overloaded when
        this many jobs already wait (None: no bound; joining never counts). `seen`: the peek
        the caller asked the cache after; when the job has ended since, nothing is queued and
        ENDED is answered (None: queue whatever happened, as a rebuild does). A job queued
        again after it ended keeps its key; its earlier outcome is replaced when it ends."""
        ...

    def take(self, builder: str, lease_seconds: float = LEASE_SECONDS,
             timeout: float | None = 0, exclude: Collection[JobKey] = (),
             now: float | None = None, accept: Accept | None = None) -> Lease | None:
        """The oldest queued job (but those in `exclude`, and those whose request `accept`
        refuses: they stay queued, in order, for other builders), now running under a lease for
        `builder`; jobs whose lease expired are queued again first. Waits up to `timeout`
        seconds (None: until there is one) for work; None when there was none or the queue was
        closed."""
        ...

    def lease_of(self, key: JobKey) -> Lease | None:
        """The lease the job runs under now (who holds it, which take); None when it is not
        running. The central server checks a remote builder's uploads against it."""
        ...

    def heartbeat(self, lease: Lease, lease_seconds: float = LEASE_SECONDS,
                  now: float | None = None) -> str | None:
        """Renew the lease; the reason of a cancel asked for meanwhile (the builder stops the
        job), else None. LeaseLost when the lease is not held any more."""
        ...

    def wait_for_cancel(self, lease: Lease, timeout: float) -> str | None:
        """The reason as soon as a cancel of the leased job is asked for, within `timeout`
        seconds; None when none was (a builder's heartbeat loop waits here between beats)."""
        ...

    def finish(self, lease: Lease, outcome: Outcome, now: float | None = None) -> None:
        """Record how the job ended and tell every waiter, in any process. LeaseLost (and
        nothing recorded) when the lease is not held any more."""
        ...

    def note_log(self, lease: Lease, log_file: str) -> None:
        """Say which file is the leased job's log ("st_dev:st_ino", written as the builder opens
        it), so that a reader in another process follows that file and no other. LeaseLost
        when the lease is not held any more."""
        ...

    def log_file(self, key: JobKey) -> str | None:
        """The running job's log file as its builder noted it; None when it is not running or
        its log is not open yet."""
        ...

    def drop_builder(self, prefix: str) -> list[JobKey]:
        """A builder is known to be gone (its process died): the leases of every builder named
        `prefix`... run out now, so their jobs are queued again at the next take (an interruption
        each). The keys of those jobs."""
        ...

    def release(self, lease: Lease) -> None:
        """Give a job taken but not started back to the queue, where it was, with no
        interruption counted (a builder stopping, or a job that must wait for something).
        LeaseLost when the lease is not held any more."""
        ...

    def cancel(self, key: JobKey, reason: str, info: dict | None = None,
               now: float | None = None) -> Cancelled:
        """Cancel a job in flight: a queued one ends at once (with `info` as its record), a
        running one is handed to its builder (heartbeat, wait_for_cancel)."""
        ...

    def wait(self, key: JobKey, timeout: float | None = None) -> Outcome | None:
        """The outcome of the job with this key once it is not in flight (at once when it is
        not); None when `timeout` passed first or the queue was closed."""
        ...

    def reap(self, now: float | None = None, every_lease: bool = False) -> list[JobKey]:
        """Queue again the running jobs whose lease expired (all of them with `every_lease`:
        at start-up, when no builder of the previous process lives on), counting an
        interruption; one interrupted MAX_INTERRUPTIONS times in a row is abandoned instead.
        The keys queued again."""
        ...

    def position(self, key: JobKey) -> int | None:
        """How many queued jobs are ahead of this one (0: it is next); None when it is not
        queued."""
        ...

    def jobs(self, limit: int = 1000) -> list[InFlight]:
        """The jobs in flight, oldest first (queued and running alike), at most `limit`."""
        ...

    def job(self, key: JobKey) -> InFlight | None:
        """The job in flight with this key; None when it is not in flight."""
        ...

    def stats(self) -> QueueStats:
        ...

    def close(self) -> None:
        """Wake every take and wait of this process (they answer None) and refuse new ones;
        finish, heartbeat and cancel still work, so builds that run on may end."""
        ...
