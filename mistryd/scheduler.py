"""Admission, waiting and this process's build workers, on top of the queue (mistryd/queue/).

The scheduler decides what runs when; the builder executes. The queue holds the truth (which job
is queued, running or ended, who holds it); the scheduler keeps this process's view of it:
Flights for the jobs someone here waits for or builds (their Job: live log, cancel event), and
`job_concurrency` workers that take jobs under a lease, heartbeat, and finish them. Identical
requests share one job, whichever process they arrive at; every waiter gets the same outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .builder import Job
from .done import Done
from .errors import MistryError, ShuttingDown
from .jobs import BuildInfo
from .queue import (
    LEASE_SECONDS,
    Admission,
    Cancelled,
    JobKey,
    JobQueue,
    Lease,
    LeaseLost,
    MemoryQueue,
    Outcome,
)
from .store import Status

log = logging.getLogger("mistryd")

Cached = TypeVar("Cached")  # what a cache answers instead of a build (the server's: a Hit)
PARKED_LOOK = 0.5  # while a job is parked, idle workers look for it again this often


def may_queue(queued: int, backlog: int) -> bool:
    """Admission: a new build may wait in the queue while fewer than `backlog` are waiting."""
    return queued < backlog


@dataclass
class Flight:
    """A job in flight that this process waits for or builds."""

    job: Job
    done: Done = field(default_factory=Done)
    result: BuildInfo | None = None
    running: bool = False  # built by a worker of this process right now

    def wait(self, timeout: float | None = None) -> BuildInfo | None:
        """The outcome; None when the server stopped first (or `timeout` passed)."""
        self.done.wait(timeout)
        return self.result


@dataclass
class Elsewhere:
    """A job in flight that nobody in this process waited for (a cancel's answer)."""

    scheduler: Scheduler
    key: JobKey

    def wait(self, timeout: float | None = None) -> BuildInfo | None:
        outcome = self.scheduler.queue.wait(self.key, timeout)
        return None if outcome is None else self.scheduler.info_of(self.key, None, outcome)


@dataclass
class Ticket:
    flight: Flight
    coalesced: bool


def request_of(job: Job) -> dict:
    """What the queue keeps of a job: enough to make it again anywhere, and what a builder
    elsewhere decides by (labels, central_only, queued_at: docs/distributed.md)."""
    r = job.request
    request = {"project": r.project, "params": dict(r.params), "group": r.group,
               "rebuild": r.rebuild, "queued_at": job.queued_at}
    if job.labels:
        request["labels"] = list(job.labels)
    if job.central_only:
        request["central_only"] = True
    return request


class Scheduler:
    def __init__(self, run: Callable[[Job], BuildInfo], concurrency: int, backlog: int,
                 on_change: Callable[[int, int], None] | None = None,
                 on_cancel_queued: Callable[[Job], BuildInfo] | None = None,
                 blocked_on: Callable[[Job], threading.Event | None] | None = None,
                 queue: JobQueue | None = None,
                 make_job: Callable[[JobKey, dict], Job] | None = None,
                 name: str = "mistryd", lease_seconds: float = LEASE_SECONDS,
                 spare: Callable[[], int] | None = None,
                 finish: Callable[[Lease, Outcome], None] | None = None,
                 note_log: Callable[[Lease, str], None] | None = None,
                 accept: Callable[[dict], bool] | None = None,
                 look_again: float | None = None):
        self._run = run
        self.concurrency = concurrency
        self.backlog = backlog
        self.queue: JobQueue = queue if queue is not None else MemoryQueue()
        self.name = name  # builders are named `<name>-<n>` in the queue's leases
        self.lease_seconds = lease_seconds
        self._flights: dict[JobKey, Flight] = {}
        self._submitted: dict[JobKey, Job] = {}  # queued here: a worker of ours builds this Job
        self._parked: set[JobKey] = set()
        self._running = 0
        self._idle_workers = 0  # waiting in take: a job they are about to take is not waiting
        # how many jobs builders are about to take (workers elsewhere: builder processes); by
        # default this process's idle workers
        self._spare = spare or (lambda: self._idle_workers)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._on_change = on_change or (lambda queued, running: None)
        self._on_cancel_queued = on_cancel_queued
        # what a job would wait for before it can use a worker (another job building its image):
        # such a job is parked (left queued, skipped by our workers) until then
        self._blocked_on = blocked_on or (lambda job: None)
        self._make_job = make_job
        # how a job built here ends and says where its log is: in the queue (by default), or
        # through the central server (a builder on another machine: mistryd/remote/worker.py)
        self._record_outcome = finish or self.queue.finish
        self._record_log = note_log or self.queue.note_log
        # which queued jobs this process's workers take (None: any), and how often an idle
        # worker looks again when that answer may change with time (None: only when woken)
        self._accept = accept
        self._look_again = look_again
        self._workers: list[threading.Thread] = []
        self._watchers: list[threading.Thread] = []
        self._closed = False

    def start(self) -> None:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._work, args=(f"{self.name}-{i}",),
                                 name=f"mistryd-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    # --- admission ----------------------------------------------------------------------------

    def submit(self, job: Job, cached: Callable[[], Cached | None] | None = None,
               force: bool = False, admit: bool = False) -> Ticket | Cached:
        """Join the identical build in flight (in any process), or queue a new one. Unless
        `force`, `cached` is asked first (a build may have finished since the caller looked);
        what it answers, if anything, is returned instead of a Ticket. `admit` skips the backlog
        bound (jobs queued again at start-up were admitted before).
        `cached` reads files and may write to the index, so it runs outside the lock; a build
        that ends meanwhile (maybe this very one) makes it ask again (the queue answers ENDED),
        so a finished build is never built twice."""
        key = JobKey(job.project, job.id)
        while True:
            with self._lock:
                if self._closed:
                    raise ShuttingDown()
                flight = self._flights.get(key)
            if flight is not None:
                return Ticket(flight, coalesced=True)
            seen = self.queue.peek(key)
            if not seen.in_flight and not force and cached is not None:
                hit = cached()
                if hit is not None:
                    return hit
            with self._lock:
                ours = self._submitted.setdefault(key, job) is job
                backlog = None if admit else self.backlog + self._spare()
            try:
                admission = self.queue.submit(key, request_of(job), backlog=backlog,
                                              seen=None if force else seen, now=job.queued_at)
            except BaseException:
                self._forget_submitted(key, job)
                raise
            if admission is not Admission.QUEUED and ours:
                self._forget_submitted(key, job)
            if admission is Admission.ENDED:
                continue  # the cache may hold it now: ask again
            flight = self._flight_for(key, job)
            self._changed()
            return Ticket(flight, coalesced=admission is Admission.JOINED)

    def _forget_submitted(self, key: JobKey, job: Job) -> None:
        with self._lock:
            if self._submitted.get(key) is job:
                del self._submitted[key]

    def _flight_for(self, key: JobKey, job: Job) -> Flight:
        """This process's flight of a job in flight, made (and watched) on first need."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = Flight(job)
                watcher = threading.Thread(target=self._watch, args=(key, flight), daemon=True,
                                           name=f"mistryd-waits-{key.id[:12]}")
                self._watchers = [w for w in self._watchers if w.is_alive()] + [watcher]
                watcher.start()
            return flight

    def _watch(self, key: JobKey, flight: Flight) -> None:
        """Wait for the job's end (wherever it runs); hand the outcome to every local waiter."""
        outcome = self.queue.wait(key)
        if outcome is not None and not flight.job.log.finished:
            # it ended without running here (cancelled while queued, or built elsewhere):
            # this process's followers of its log are told
            flight.job.log.finish({"status": outcome.status.value,
                                   "exit_code": (outcome.info or {}).get("ExitCode")})
        self._resolve(key, flight, outcome)

    def _resolve(self, key: JobKey, flight: Flight, outcome: Outcome | None) -> None:
        """Answer the flight's waiters (once) and let go of it."""
        result = None if outcome is None else self.info_of(key, flight.job, outcome)
        with self._lock:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if self._submitted.get(key) is flight.job:
                del self._submitted[key]
            if flight.done.is_set():
                return
            flight.result = result
            flight.done.set()
        self._changed()

    def info_of(self, key: JobKey, job: Job | None, outcome: Outcome) -> BuildInfo:
        """The BuildInfo waiters get: the job's record, or (a job cancelled before it ran with
        no record given) one made from what is known."""
        if outcome.info:
            return BuildInfo.from_json(outcome.info)
        return BuildInfo(ID=key.id, Project=key.project,
                         Params=job.request.key_params() if job else {},
                         Group=job.request.group if job else "", Path="",
                         URL=f"job/{key.project}/{key.id}", StartedAt="",
                         Status=outcome.status.value, ErrBuild=outcome.reason)

    # --- cancel -------------------------------------------------------------------------------

    def cancel(self, project: str, build_id: str, reason: str,
               record: dict | None = None) -> Flight | Elsewhere | None:
        """Cancel a build in flight: a queued one ends at once (`record`, or what
        on_cancel_queued makes of this process's Job, is its record), a running one is stopped
        by its builder (the container is killed), wherever it runs. None when no such build is
        in flight."""
        key = JobKey(project, build_id)
        with self._lock:
            flight = self._flights.get(key)
        if flight is not None:
            flight.job.request_cancel(reason)  # a worker of ours stops at once
            if record is None and not flight.running and self._on_cancel_queued is not None:
                record = self._on_cancel_queued(flight.job).to_json()
        answer = self.queue.cancel(key, reason, record)
        if flight is not None:
            return flight
        return None if answer is Cancelled.NOT_IN_FLIGHT else Elsewhere(self, key)

    def in_flight(self, project: str, build_id: str) -> Flight | None:
        """This process's flight of a job in flight; for one submitted in another process (an
        API worker, or before a restart), a flight made from the queued request on first need,
        so its log can be followed and its end waited for here too."""
        key = JobKey(project, build_id)
        with self._lock:
            flight = self._flights.get(key)
        if flight is not None or self._make_job is None:
            return flight
        found = self.queue.job(key)
        if found is None:
            return None
        try:
            job = self._make_job(key, found.request)
        except Exception as e:  # noqa: BLE001 - cannot be followed here; its builder says why
            log.debug("mistryd: no flight for %s here: %s", key, e)
            return None
        job.queued_at = found.queued_at
        return self._flight_for(key, job)

    def flights(self) -> list[Flight]:
        with self._lock:
            return list(self._flights.values())

    # --- stop ---------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether new jobs are refused (the server is stopping)."""
        return self._closed

    def refuse_new(self) -> None:
        """Admit no new job (ShuttingDown); waiters keep waiting (builds elsewhere finish)."""
        with self._lock:
            self._closed = True

    def stop(self, grace: float = 0, reason: str = "mistryd stopped") -> None:
        """Take no new work; give running builds `grace` seconds, then cancel them. Queued jobs
        stay queued (they run after a restart); their waiters here get no result."""
        with self._lock:
            self._closed = True
            deadline = time.monotonic() + grace
            while self._running and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            leftovers = [f for f in self._flights.values() if f.running]
        for flight in leftovers:
            flight.job.request_cancel(f"{reason} (after a grace period of {grace:g}s)")
        with self._lock:  # the cancelled builds end (and are recorded) before the queue closes
            deadline = time.monotonic() + 30
            while self._running and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
        self.queue.close()
        for t in self._workers + self._watchers:
            t.join(30)
        for flight in self.flights():
            flight.done.set()  # result None: the waiter answers "shutting down"

    # --- this process's workers ---------------------------------------------------------------

    def _work(self, name: str) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                parked = set(self._parked)
                self._idle_workers += 1
            try:
                timeout = PARKED_LOOK if parked else self._look_again
                lease = self.queue.take(name, self.lease_seconds, timeout=timeout,
                                        exclude=parked, accept=self._accept)
            finally:
                with self._lock:
                    self._idle_workers -= 1
            if lease is None:  # the queue closed, or it is time to look for a parked job again
                continue
            with self._lock:
                closing = self._closed
            if closing:  # stopping: it stays queued for the next start
                self._release(lease)
                return
            job = self._job_for(lease)
            if job is None:
                continue
            if (blocker := self._blocked_on(job)) is not None:
                self._park(lease, blocker)
                continue
            self._build(lease, job)

    def _job_for(self, lease: Lease) -> Job | None:
        """The Job to build: the one submitted here, or one made from the queued request (a job
        submitted by another process, or queued again at start-up). None when it cannot be made
        (its end is recorded)."""
        with self._lock:
            job = self._submitted.get(lease.key)
        if job is not None:
            return job
        try:
            if self._make_job is None:
                raise RuntimeError("this scheduler cannot build jobs submitted elsewhere")
            return self._make_job(lease.key, lease.request)
        except Exception as e:  # noqa: BLE001 - the job ends with the reason, the worker lives on
            reason = e.message if isinstance(e, MistryError) else f"{type(e).__name__}: {e}"
            log.warning("mistryd: job %s cannot run: %s", lease.key, reason)
            self._finish_quietly(lease, Outcome(Status.FAILED, None, reason))
            return None

    def _build(self, lease: Lease, job: Job) -> None:
        flight = self._flight_for(lease.key, job)
        job = flight.job
        with self._lock:
            self._running += 1
            flight.running = True
        self._changed()
        ended = threading.Event()
        job.started_at = lease.started_at
        job.record = lambda outcome: self._finish(lease, outcome, job)
        job.note_log = lambda log_file: self._note_log(lease, log_file)
        threading.Thread(target=self._heartbeat, args=(lease, job, ended), daemon=True,
                         name=f"mistryd-heartbeat-{lease.key.id[:12]}").start()
        result: BuildInfo | None = None
        try:
            result = self._run(job)
        except Exception:  # the builder records its own failures; this is a last guard
            log.exception("mistryd: worker error on %s", lease.key)
        finally:
            ended.set()
            if not job.recorded:  # a run function that records nothing (tests), or a crash
                outcome = Outcome(Status(result.Status), result.to_json(), result.ErrBuild) \
                    if result is not None else Outcome(Status.FAILED, None, "the worker failed")
                self._finish_quietly(lease, outcome, job)
            with self._lock:
                self._running -= 1
                flight.running = False
                self._idle.notify_all()
            self._changed()

    def _finish(self, lease: Lease, outcome: Outcome, job: Job | None = None) -> None:
        if job is not None:
            job.recorded = True
        try:
            self._record_outcome(lease, outcome)
        except LeaseLost:
            log.warning("mistryd: job %s was taken again by another builder after its lease "
                        "ran out; the outcome of this run (%s) is dropped", lease.key,
                        outcome.status.value)
        except Exception:
            # not recorded (a full disk): the waiters of this process still get what was
            # published; the index is mended from the build folder at the next start
            with self._lock:
                flight = self._flights.get(lease.key)
            if flight is not None:
                self._resolve(lease.key, flight, outcome)
            raise

    def _note_log(self, lease: Lease, log_file: str) -> None:
        try:
            self._record_log(lease, log_file)
        except LeaseLost:
            pass  # the heartbeat finds out and stops the job
        except Exception:  # noqa: BLE001 - readers elsewhere see the log once it is published
            log.exception("mistryd: could not note the log file of %s", lease.key)

    def _finish_quietly(self, lease: Lease, outcome: Outcome, job: Job | None = None) -> None:
        try:
            self._finish(lease, outcome, job)
        except Exception:  # noqa: BLE001 - the worker lives on; the next start mends the index
            log.exception("mistryd: the end of %s was not recorded", lease.key)

    def _heartbeat(self, lease: Lease, job: Job, ended: threading.Event) -> None:
        """Renew the lease while the job runs, and pass a cancel asked for anywhere to it."""
        while not ended.is_set():
            reason = self.queue.wait_for_cancel(lease, self.lease_seconds / 3)
            if ended.is_set():
                return
            if reason is not None:
                job.request_cancel(reason)
            try:
                self.queue.heartbeat(lease, self.lease_seconds)
            except LeaseLost:
                if not ended.is_set():
                    job.lease_lost.set()
                    job.request_cancel("the job was taken again by another builder")
                return
            except Exception:  # noqa: BLE001 - a busy index: the next beat may pass
                log.exception("mistryd: heartbeat of %s failed", lease.key)
            if reason is not None:
                ended.wait(self.lease_seconds / 3)  # asked once; now only renew

    def _release(self, lease: Lease) -> None:
        try:
            self.queue.release(lease)
        except LeaseLost:
            pass

    def _park(self, lease: Lease, blocker: threading.Event) -> None:
        """Leave the job queued (a cancel ends it as usual) and skipped by our workers until
        `blocker` is set; no worker waits for it."""
        with self._lock:
            self._parked.add(lease.key)
        self._release(lease)

        def unpark() -> None:
            blocker.wait()
            with self._lock:
                self._parked.discard(lease.key)

        threading.Thread(target=unpark, daemon=True,
                         name=f"mistryd-parked-{lease.key.id[:12]}").start()

    def _changed(self) -> None:
        try:
            stats = self.queue.stats()
        except Exception:  # noqa: BLE001 - only the gauges miss an update
            return
        self._on_change(stats.queued, stats.running)
