"""The queue on Redis, through RQ: one shared queue that builders on many machines take work from.

A job is an RQ job whose id is the build key (`rq_job_id`), on one RQ queue; a lease is an RQ
*execution* in the queue's StartedJobRegistry, scored by when the lease runs out; an ended job
sits in RQ's Finished, Failed or Canceled registry. So `rq info`, `rq requeue` and rq-dashboard
see mistryd's queue as any other RQ queue. What RQ has no field for (the lease's token and
holder, a cancel asked for, the log file, the outcome) is in the job's `meta`. Every change is
one WATCH/MULTI transaction on the job's hash, so two processes (or machines) never take the same
job or queue it twice. Waiting listens on Redis pub/sub (`mistryd:queue:NAME:*`); a slow safety
look (SAFETY_LOOK) only covers a message lost while the connection to Redis was down.
docs/distributed.md says why RQ and how our queue maps onto it.

Builders are not `rq worker`s: never start `rq worker` on mistryd's queue (it would run
`built_by_mistryd`, which only refuses).
"""

from __future__ import annotations

import math
import re
import string
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar, cast

import redis
from redis.client import Pipeline
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer
from rq.utils import as_text, parse_composite_key

from ..errors import Overloaded, Unavailable
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
from .wakeups import Wakeups, earliest, look_until, sleep_until_woken

ENDED_TTL = 7 * 24 * 3600  # an ended job's record: for late waiters and peeks (the index keeps history)
WORK = "work"
T = TypeVar("T")
Writes = Callable[[Pipeline], object] | None  # what a transaction writes, when it writes

_SAFE = frozenset(string.ascii_letters + string.digits + "-")
_ESCAPED = re.compile(r"(?:_[0-9a-f]{2})+")


def rq_job_id(key: JobKey) -> str:
    """The RQ job id of a build key. RQ allows letters, digits, `_` and `-` only, so anything else
    (and `_` itself) is written `_xx` per UTF-8 byte; `__` parts project and id: `hello__3fa2...`."""
    return f"{_escape(key.project)}__{_escape(key.id)}"


def job_key(job_id: str) -> JobKey:
    project, _, build_id = job_id.partition("__")
    return JobKey(_unescape(project), _unescape(build_id))


def _escape(text: str) -> str:
    return "".join(c if c in _SAFE else "".join(f"_{b:02x}" for b in c.encode()) for c in text)


def _unescape(text: str) -> str:
    return _ESCAPED.sub(lambda m: bytes.fromhex(m.group().replace("_", "")).decode(), text)


def built_by_mistryd(request: dict) -> None:
    """The function RQ names as each job's: builds are run by mistryd's builders, not by RQ."""
    raise RuntimeError("mistryd's jobs are built by `mistryd worker`, not by `rq worker`")


def _ended(job_id: str) -> str:
    return f"end:{job_id}"


def _cancel(job_id: str) -> str:
    return f"cancel:{job_id}"


class RedisQueue:
    def __init__(self, url: str, name: str = "mistryd", max_interruptions: int = MAX_INTERRUPTIONS):
        self.redis = redis.Redis.from_url(url)
        self.max_interruptions = max_interruptions
        self.rq = Queue(name, connection=self.redis, serializer=JSONSerializer)
        self.started = StartedJobRegistry(queue=self.rq)
        self._registries: dict[JobStatus, BaseRegistry] = {
            JobStatus.FINISHED: FinishedJobRegistry(queue=self.rq),
            JobStatus.FAILED: FailedJobRegistry(queue=self.rq),
            JobStatus.CANCELED: CanceledJobRegistry(queue=self.rq),
        }
        self._channels = f"mistryd:queue:{name}:"
        self._wakeups = Wakeups()
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()

    # --- plumbing ---------------------------------------------------------------------------

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
        except NoSuchJobError:
            return None

    def _transact(self, job_id: str, decide: Callable[[Job | None], tuple[T, Writes]],
                  *also: str) -> T:
        """Read the job, decide, and write what was decided in one transaction: when anyone else
        changed the job (or the keys `also`) meanwhile, read and decide again."""
        while True:
            with self.redis.pipeline() as pipe:
                try:
                    pipe.watch(Job.key_for(job_id), *also)
                    answer, writes = decide(self._fetch(job_id))
                    if writes is not None:
                        pipe.multi()
                        writes(pipe)
                        pipe.execute()
                    return answer
                except redis.WatchError:
                    continue

    def _ring(self, topic: str) -> None:
        self._wakeups.ring(topic)  # this process's waiters, at once
        self.redis.publish(self._channels + topic, b"")

    @contextmanager
    def _listening(self, topic: str) -> Iterator[threading.Event]:
        """Wake-ups of `topic` from any process on any machine."""
        if self._listener is None:
            with self._listener_lock:
                if self._listener is None and not self._wakeups.closed:
                    self._listener = _Listener(self.redis, self._channels, self._wakeups.ring)
        with self._wakeups.listening(topic) as event:
            yield event

    def _leases(self, until: float | str = "+inf") -> list[str]:
        """The StartedJobRegistry's entries ("job id:execution id") whose lease runs out by `until`."""
        found = cast(list[bytes], self.redis.zrangebyscore(self.started.key, "-inf", until))
        return [as_text(entry) for entry in found]

    def _held(self, job: Job | None, lease: Lease) -> Job:
        if job is None or job.get_status(refresh=False) != JobStatus.STARTED \
                or job.meta.get("builder") != lease.builder or job.meta.get("token") != lease.token:
            raise LeaseLost(lease)
        return job

    def _execution(self, job: Job) -> Execution:
        return Execution(job.meta["execution"], job.id, self.redis, job.meta.get("builder") or "")

    def _lease_until(self, pipe: Pipeline, job: Job, until: float) -> None:
        # RQ scores an execution by its own clock; ours is passed in (`now`), so set the score
        pipe.zadd(self.started.key, {self._execution(job).composite_key: until})

    def _end(self, pipe: Pipeline, job: Job, outcome: Outcome, at: float) -> None:
        """Record how the job ended, in RQ's registry for that end and in the job's meta."""
        if job.get_status(refresh=False) == JobStatus.STARTED:
            self._execution(job).delete(job, pipe)
        else:
            pipe.lrem(self.rq.key, 0, job.id)
        rq_status = {Status.SUCCEEDED: JobStatus.FINISHED,
                     Status.CANCELLED: JobStatus.CANCELED,
                     Status.SUPERSEDED: JobStatus.CANCELED}.get(outcome.status, JobStatus.FAILED)
        job.meta.update(outcome={"status": outcome.status.value, "info": outcome.info,
                                 "reason": outcome.reason},
                        ended_at=at, builder=None, execution=None, cancel_reason=None,
                        log_file=None)
        job.ended_at = datetime.fromtimestamp(at, UTC)
        job.set_status(rq_status, pipeline=pipe)
        job.save(pipeline=pipe)
        registry = self._registries[rq_status]
        if isinstance(registry, FailedJobRegistry):
            registry.add(job, ttl=ENDED_TTL, exc_string=f"{outcome.status.value}: {outcome.reason}",
                         pipeline=pipe)
        else:
            registry.add(job, ttl=ENDED_TTL, pipeline=pipe)
        pipe.expire(job.key, ENDED_TTL)

    def _interruptions(self, job: Job) -> int:
        # RQ's retries count the lost leases: each one spends a retry (ours or RQ's own clean-up)
        return self.max_interruptions - 1 - (job.retries_left or 0)

    # --- the API tier's side ----------------------------------------------------------------

    def peek(self, key: JobKey) -> Peek:
        job = self._fetch(rq_job_id(key))
        return Peek(_status(job), _ended_at(job))

    def submit(self, key: JobKey, request: dict, *, backlog: int | None = None,
               seen: Peek | None = None, now: float | None = None) -> Admission:
        at = time.time() if now is None else now
        job_id = rq_job_id(key)

        def decide(job: Job | None) -> tuple[Admission, Writes]:
            status = _status(job)
            if status is not None and not status.finished:
                return Admission.JOINED, None
            if seen is not None and _ended_at(job) != seen.ended_at:
                return Admission.ENDED, None
            if backlog is not None and self.redis.llen(self.rq.key) >= backlog:
                raise Overloaded()

            def writes(pipe: Pipeline) -> None:
                token = 0
                if job is not None:  # queued again after it ended: the old record goes
                    token = job.meta.get("token", 0)
                    for registry in self._registries.values():
                        registry.remove(job, pipeline=pipe)
                    pipe.delete(job.key)
                self.rq.enqueue_job(self._new_job(job_id, request, token, at), pipeline=pipe)
            return Admission.QUEUED, writes

        try:
            # with a backlog, the queue's length is part of the decision: watched too
            answer = self._transact(job_id, decide, *([self.rq.key] if backlog is not None else []))
        except redis.ConnectionError as e:
            raise Unavailable(f"mistryd could not reach its Redis queue ({e}); nothing was started, "
                              "try again later") from None
        if answer is Admission.QUEUED:
            self._ring(WORK)
        return answer

    def _new_job(self, job_id: str, request: dict, token: int, at: float) -> Job:
        key = job_key(job_id)
        job = Job.create(built_by_mistryd, args=[request], connection=self.redis, id=job_id,
                         serializer=JSONSerializer, description=f"mistryd build {key}",
                         result_ttl=ENDED_TTL, failure_ttl=ENDED_TTL,
                         meta={"queued_at": at, "token": token})
        # a lost lease spends a retry, and the job goes back to the front (RQ's clean-up alike)
        job.retries_left = self.max_interruptions - 1
        job.retry_intervals = [0]
        job.enqueue_at_front_on_retry = True
        return job

    def cancel(self, key: JobKey, reason: str, info: dict | None = None,
               now: float | None = None) -> Cancelled:
        at = time.time() if now is None else now
        job_id = rq_job_id(key)

        def decide(job: Job | None) -> tuple[Cancelled, Writes]:
            status = _status(job)
            if job is None or status is None or status.finished:
                return Cancelled.NOT_IN_FLIGHT, None
            if status is Status.RUNNING:
                def ask(pipe: Pipeline) -> None:
                    if job.meta.get("cancel_reason") is None:
                        job.meta["cancel_reason"] = reason
                    job.retries_left = 0  # a builder lost now ends the job: RQ's clean-up too
                    job.save(pipeline=pipe)
                return Cancelled.REQUESTED, ask
            return Cancelled.ENDED, lambda pipe: self._end(
                pipe, job, Outcome(cancel_status(reason), info, reason), at)

        answer = self._transact(job_id, decide)
        if answer is Cancelled.ENDED:
            self._ring(_ended(job_id))
        elif answer is Cancelled.REQUESTED:
            self._ring(_cancel(job_id))
        return answer

    def wait(self, key: JobKey, timeout: float | None = None) -> Outcome | None:
        job_id = rq_job_id(key)

        def ended() -> Outcome | None:
            job = self._fetch(job_id)
            status = _status(job)
            return _outcome(job) if job is not None and status is not None and status.finished \
                else None

        return look_until(self._listening(_ended(job_id)), ended,
                          None if timeout is None else time.monotonic() + timeout,
                          lambda: self._wakeups.closed)

    # --- the builders' side -----------------------------------------------------------------

    def take(self, builder: str, lease_seconds: float = LEASE_SECONDS,
             timeout: float | None = 0, exclude: Collection[JobKey] = (),
             now: float | None = None, accept: Accept | None = None) -> Lease | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        skip = {rq_job_id(k) for k in exclude}
        with self._listening(WORK) as woken:
            while True:
                woken.clear()
                if self._wakeups.closed:
                    return None
                at = time.time() if now is None else now
                self.reap(at)
                lease = self._claim(builder, lease_seconds, skip, at, accept)
                if lease is not None:
                    return lease
                # nobody rings when a lease runs out: wake up for the first one that will
                first = cast(list[tuple[bytes, float]],
                             self.redis.zrange(self.started.key, 0, 0, withscores=True))
                until = deadline if not first else earliest(
                    deadline, time.monotonic() + max(0.01, first[0][1] - time.time() + 0.01))
                if not sleep_until_woken(woken, until) and deadline is not None \
                        and time.monotonic() >= deadline:
                    return None

    def _claim(self, builder: str, lease_seconds: float, skip: set[str],
               at: float, accept: Accept | None = None) -> Lease | None:
        ids = [as_text(raw) for raw in self.redis.lrange(self.rq.key, 0, -1)]
        if accept is not None:  # one read of the queued requests, not one per job
            jobs = Job.fetch_many([i for i in ids if i not in skip], self.redis,
                                  serializer=JSONSerializer)
            skip = skip | {job.id for job in jobs if job is not None and not accept(job.args[0])}
        for job_id in ids:
            if job_id in skip:
                continue

            def decide(job: Job | None, job_id: str = job_id) -> tuple[Lease | None, Writes]:
                if job is None or job.get_status(refresh=False) != JobStatus.QUEUED:
                    # a leftover entry (RQ's clean-up and ours both requeued it): drop it
                    return None, lambda pipe: pipe.lrem(self.rq.key, 0, job_id)
                token = job.meta.get("token", 0) + 1
                request = job.args[0]
                lease = Lease(job_key(job_id), builder, token, request, job.meta["queued_at"], at,
                              self._interruptions(job))

                def writes(pipe: Pipeline) -> None:
                    pipe.lrem(self.rq.key, 1, job_id)
                    execution = Execution.create(job, _ttl(lease_seconds), pipe, worker_name=builder)
                    job.meta.update(token=token, builder=builder, execution=execution.id,
                                    started_at=at, cancel_reason=None, log_file=None)
                    job.prepare_for_execution(builder, pipe)
                    job.save(pipeline=pipe)
                    self._lease_until(pipe, job, at + lease_seconds)
                return lease, writes

            lease = self._transact(job_id, decide)
            if lease is not None:
                return lease
        return None

    def heartbeat(self, lease: Lease, lease_seconds: float = LEASE_SECONDS,
                  now: float | None = None) -> str | None:
        at = time.time() if now is None else now

        def decide(job: Job | None) -> tuple[str | None, Writes]:
            held = self._held(job, lease)

            def writes(pipe: Pipeline) -> None:
                self._execution(held).heartbeat(self.started, _ttl(lease_seconds), pipe)
                held.heartbeat(datetime.now(UTC), _ttl(lease_seconds), pipeline=pipe)
                self._lease_until(pipe, held, at + lease_seconds)
            return held.meta.get("cancel_reason"), writes

        return self._transact(rq_job_id(lease.key), decide)

    def wait_for_cancel(self, lease: Lease, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        job_id = rq_job_id(lease.key)
        with self._listening(_cancel(job_id)) as woken:
            while True:
                woken.clear()
                job = self._fetch(job_id)
                if job is None or job.meta.get("token") != lease.token:
                    return None
                reason = job.meta.get("cancel_reason")
                if reason is not None or self._wakeups.closed:
                    return reason
                if not sleep_until_woken(woken, deadline):
                    return None

    def finish(self, lease: Lease, outcome: Outcome, now: float | None = None) -> None:
        at = time.time() if now is None else now

        def decide(job: Job | None) -> tuple[None, Writes]:
            held = self._held(job, lease)
            return None, lambda pipe: self._end(pipe, held, outcome, at)

        job_id = rq_job_id(lease.key)
        self._transact(job_id, decide)
        self._ring(_ended(job_id))

    def note_log(self, lease: Lease, log_file: str) -> None:
        def decide(job: Job | None) -> tuple[None, Writes]:
            held = self._held(job, lease)
            held.meta["log_file"] = log_file
            return None, lambda pipe: held.save(pipeline=pipe)

        self._transact(rq_job_id(lease.key), decide)

    def log_file(self, key: JobKey) -> str | None:
        job = self._fetch(rq_job_id(key))
        if job is None or job.get_status(refresh=False) != JobStatus.STARTED:
            return None
        return job.meta.get("log_file")

    def drop_builder(self, prefix: str) -> list[JobKey]:
        dropped = []
        for entry in self._leases():
            job = self._fetch(parse_composite_key(entry)[0])
            if job is None or not (job.meta.get("builder") or "").startswith(prefix):
                continue

            def decide(job: Job | None, entry: str = entry) -> tuple[bool, Writes]:
                builder = (job.meta.get("builder") or "") if job is not None else ""
                if job is None or job.get_status(refresh=False) != JobStatus.STARTED \
                        or not builder.startswith(prefix) \
                        or self._execution(job).composite_key != entry:
                    return False, None
                return True, lambda pipe: pipe.zadd(self.started.key, {entry: 0}, xx=True)

            if self._transact(job.id, decide):
                dropped.append(job_key(job.id))
        if dropped:
            self._ring(WORK)
        return dropped

    def release(self, lease: Lease) -> None:
        def decide(job: Job | None) -> tuple[None, Writes]:
            held = self._held(job, lease)

            def writes(pipe: Pipeline) -> None:
                self._execution(held).delete(held, pipe)
                held.meta.update(builder=None, execution=None, log_file=None)
                held.set_status(JobStatus.QUEUED, pipeline=pipe)
                held.save(pipeline=pipe)
                self.rq.push_job_id(held.id, pipeline=pipe, at_front=True)
            return None, writes

        self._transact(rq_job_id(lease.key), decide)
        self._ring(WORK)

    def reap(self, now: float | None = None, every_lease: bool = False) -> list[JobKey]:
        at = time.time() if now is None else now
        jobs = [(job, entry) for entry in self._leases("+inf" if every_lease else at)
                if (job := self._fetch(parse_composite_key(entry)[0])) is not None]
        # queued again at the front one by one: the newest first, so that the oldest ends first
        jobs.sort(key=lambda found: found[0].meta.get("queued_at", 0), reverse=True)
        again, ended = [], []
        for job, entry in jobs:

            def decide(job: Job | None, entry: str = entry) -> tuple[Status | None, Writes]:
                if job is None or job.get_status(refresh=False) != JobStatus.STARTED \
                        or self._execution(job).composite_key != entry:
                    return None, lambda pipe: pipe.zrem(self.started.key, entry)  # a leftover
                interruptions = self._interruptions(job) + 1
                if job.meta.get("cancel_reason") is not None:
                    outcome = Outcome(cancel_status(job.meta["cancel_reason"]), None,
                                      job.meta["cancel_reason"])
                elif interruptions >= self.max_interruptions:
                    outcome = Outcome(Status.ABANDONED, None, f"interrupted {interruptions} times "
                                      "in a row; not tried again")
                else:
                    def queue_again(pipe: Pipeline) -> None:
                        self._execution(job).delete(job, pipe)
                        job.meta.update(builder=None, execution=None, log_file=None)
                        job.retry(self.rq, pipe)  # RQ's own retry: one retry spent, at the front
                    return Status.QUEUED, queue_again
                return outcome.status, lambda pipe: self._end(pipe, job, outcome, at)

            to = self._transact(job.id, decide)
            if to is Status.QUEUED:
                again.append(job_key(job.id))
            elif to is not None:
                ended.append(job.id)
        for job_id in ended:
            self._ring(_ended(job_id))
        if again:
            self._ring(WORK)
        return again

    # --- questions ----------------------------------------------------------------------------

    def position(self, key: JobKey) -> int | None:
        found = self.redis.lpos(self.rq.key, rq_job_id(key))
        return found if isinstance(found, int) else None

    def jobs(self, limit: int = 1000) -> list[InFlight]:
        ids = [as_text(raw) for raw in self.redis.lrange(self.rq.key, 0, -1)]
        ids += self.started.get_job_ids(cleanup=False)  # job ids, without the execution
        found = {job.id: job for job in Job.fetch_many(dict.fromkeys(ids), self.redis,
                                                       serializer=JSONSerializer)
                 if job is not None and _in_flight(job)}
        ordered = sorted(found.values(), key=lambda job: (job.meta.get("queued_at", 0), job.id))
        return [_describe(job) for job in ordered[:limit]]

    def job(self, key: JobKey) -> InFlight | None:
        job = self._fetch(rq_job_id(key))
        return _describe(job) if job is not None and _in_flight(job) else None

    def lease_of(self, key: JobKey) -> Lease | None:
        job = self._fetch(rq_job_id(key))
        if job is None or job.get_status(refresh=False) != JobStatus.STARTED:
            return None
        meta = job.meta
        return Lease(key, meta.get("builder") or "", meta.get("token", 0), job.args[0],
                     meta.get("queued_at", 0.0), meta.get("started_at", 0.0),
                     self._interruptions(job))

    def stats(self) -> QueueStats:
        return QueueStats(self.redis.llen(self.rq.key),
                          self.started.get_job_count(cleanup=False))

    def close(self) -> None:
        with self._listener_lock:
            self._wakeups.close()
            if self._listener is not None:
                self._listener.close()


class _Listener:
    """This handle's subscription to the queue's channels, read by one thread that rings the
    topic of each message heard. The subscription is confirmed before the first waiter looks
    at Redis, so nothing that happens after that look goes unheard."""

    def __init__(self, connection: redis.Redis, prefix: str, heard: Callable[[str], None]):
        self._prefix = prefix
        self._heard = heard
        self._closed = False
        self._pubsub = connection.pubsub()
        self._pubsub.psubscribe(prefix + "*")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "psubscribe":
                break
        self._thread = threading.Thread(target=self._listen, name="mistryd-queue-redis",
                                        daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._closed:
            try:
                message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (redis.RedisError, OSError, ValueError):
                if self._closed:
                    break
                time.sleep(1.0)  # Redis is away; the next read connects and subscribes again
                continue
            if message is not None and message["type"] == "pmessage":
                self._heard(as_text(message["channel"])[len(self._prefix):])
        self._pubsub.close()

    def close(self) -> None:
        self._closed = True  # the thread ends within a second, on its own


def _status(job: Job | None) -> Status | None:
    if job is None:
        return None
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return Status.RUNNING
    if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED):
        return _outcome(job).status
    return Status.QUEUED  # queued (or another of RQ's waiting states)


def _in_flight(job: Job) -> bool:
    status = _status(job)
    return status is not None and not status.finished


def _outcome(job: Job) -> Outcome:
    """How an ended job ended: as mistryd recorded it, or as RQ's own clean-up of an abandoned
    job did (a lease lost with no retry left: abandoned, or cancelled when a cancel was asked)."""
    recorded = job.meta.get("outcome")
    if recorded:
        return Outcome(Status(recorded["status"]), recorded["info"], recorded["reason"])
    if job.meta.get("cancel_reason") is not None:
        return Outcome(cancel_status(job.meta["cancel_reason"]), None, job.meta["cancel_reason"])
    if job.get_status(refresh=False) == JobStatus.FAILED:
        return Outcome(Status.ABANDONED, None, "its builder was lost with no retry left (RQ)")
    return Outcome(Status.CANCELLED, None, "cancelled through RQ")


def _ended_at(job: Job | None) -> float | None:
    if job is None or not (_status(job) or Status.QUEUED).finished:
        return None
    if job.meta.get("ended_at") is not None:
        return job.meta["ended_at"]
    return job.ended_at.timestamp() if job.ended_at else None


def _describe(job: Job) -> InFlight:
    running = job.get_status(refresh=False) == JobStatus.STARTED
    return InFlight(job_key(job.id), Status.RUNNING if running else Status.QUEUED,
                    job.args[0], job.meta.get("queued_at", 0.0),
                    job.meta.get("started_at") if running else None,
                    job.meta.get("builder") if running else None)


def _ttl(lease_seconds: float) -> int:
    """Seconds RQ keeps an execution's record: the lease and a minute (RQ wants whole seconds)."""
    return max(1, math.ceil(lease_seconds)) + 60
