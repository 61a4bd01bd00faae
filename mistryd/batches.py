"""Dependency-ordered batches (`POST /batches`, docs/batches.md): jobs that name the jobs they
need; a job is submitted once every job it needs has succeeded, and skipped (with the reason
naming the dependency) once one of them has not.

Three parts: the request's validation and the plan (pure: which waiting jobs may be submitted
now, which must be skipped), `advance` (one step of one batch against the index and the queue,
safe to run in several processes at once: a job is claimed in the index before it is submitted),
and the `BatchDriver`, a thread in the process that collects garbage that advances every open
batch. All state is in the index, so a batch survives a restart: the next driver goes on with it.
"""

from __future__ import annotations

import graphlib
import logging
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from .errors import BadRequest, MistryError, UnknownProject, Unprocessable
from .every import Every
from .hits import Hit
from .jobs import JobRequest
from .names import check_name
from .store import BatchJobRow, Status

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("mistryd")

MAX_JOBS = 500
LOOK_EVERY = 0.5  # seconds between two looks of the driver (docs/batches.md: why a poll)
# a job claimed this long ago whose build the index still does not show was never submitted (its
# process died between the claim and the submission): it is submitted again
SUBMIT_GRACE = 30.0

WAITING, SUBMITTED, SKIPPED = "waiting", "submitted", "skipped"


# --- the request ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchJob:
    name: str
    request: JobRequest
    needs: tuple[str, ...]


def parse_batch(body: object) -> list[BatchJob]:
    """Validate a decoded `POST /batches` body: BadRequest (400) for a malformed one (each job's
    own fields as POST /jobs checks them), Unprocessable (422) naming a duplicate name, an unknown
    need or a cycle. Projects are checked by the caller, which knows them."""
    if not isinstance(body, dict) or set(body) != {"jobs"}:
        raise BadRequest('the request body must be a JSON object {"jobs": [...]}, each job like '
                         '{"name": "a", "project": "hello", "needs": ["b"]}')
    raw_jobs = body["jobs"]
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise BadRequest("'jobs' must be a non-empty list of jobs")
    if len(raw_jobs) > MAX_JOBS:
        raise BadRequest(f"a batch has at most {MAX_JOBS} jobs, got {len(raw_jobs)}; "
                         "split it into several batches")
    jobs = [_parse_job(i, raw) for i, raw in enumerate(raw_jobs)]
    seen: set[str] = set()
    for job in jobs:
        if job.name in seen:
            raise Unprocessable(f"job name {job.name!r} is given twice; names must be unique")
        seen.add(job.name)
    for job in jobs:
        for need in job.needs:
            if need not in seen:
                raise Unprocessable(f"job {job.name!r} needs {need!r}, which is not a job of "
                                    f"this batch (its jobs: {', '.join(sorted(seen))})")
    order({job.name: job.needs for job in jobs})  # Unprocessable naming a cycle
    return jobs


def _parse_job(index: int, raw: object) -> BatchJob:
    if not isinstance(raw, dict):
        raise BadRequest(f"jobs[{index}] must be an object like "
                         '{"name": "a", "project": "hello", "needs": ["b"]}')
    fields = dict(raw)
    # matched case-insensitively, as POST /jobs matches its own fields
    name = _pop_field(fields, "name")
    needs = _pop_field(fields, "needs")
    if name is None:
        raise BadRequest(f"jobs[{index}]: 'name' is required (a name other jobs' 'needs' use)")
    name = check_name(f"jobs[{index}]: name", name)
    if needs is None:
        needs = []
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise BadRequest(f"job {name!r}: 'needs' must be a list of job names, like [\"b\"]")
    if len(set(needs)) != len(needs):
        raise BadRequest(f"job {name!r}: 'needs' names a job twice")
    try:
        request = JobRequest.from_json(fields)
    except BadRequest as e:
        raise BadRequest(f"job {name!r}: {e.message}") from None
    return BatchJob(name, request, tuple(needs))


def _pop_field(fields: dict, name: str) -> object:
    found = [key for key in fields if isinstance(key, str) and key.lower() == name]
    if len(found) > 1:
        raise BadRequest(f"field {name!r} is given twice (keys match case-insensitively)")
    return fields.pop(found[0]) if found else None


def order(needs: dict[str, tuple[str, ...]]) -> list[str]:
    """The names in an order where every job comes after the jobs it needs; Unprocessable
    naming the jobs of a cycle ("jobs a -> b -> a form a cycle": a needs b, b needs a)."""
    sorter = graphlib.TopologicalSorter(needs)
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as e:
        cycle = list(reversed(e.args[1]))  # graphlib lists it from need to needer
        raise Unprocessable(f"jobs {' -> '.join(cycle)} form a cycle: "
                            "no job of it can start; remove one of its needs") from None


# --- the plan (pure) -----------------------------------------------------------------------------

_ENDED_AS = {Status.FAILED.value: "failed", Status.CANCELLED.value: "was cancelled",
             Status.TIMED_OUT.value: "timed out", Status.ABANDONED.value: "was abandoned",
             Status.SUPERSEDED.value: "was superseded"}
ENDS = {*_ENDED_AS, Status.SUCCEEDED.value, SKIPPED}


@dataclass(frozen=True)
class Plan:
    submit: list[str]  # waiting jobs whose needs all succeeded, in the order given
    skip: dict[str, str]  # waiting jobs that never can run, and why
    done: bool  # every job has ended (once `skip` is recorded)


def plan(jobs: list[tuple[str, tuple[str, ...], str]]) -> Plan:
    """`jobs`: (name, needs, state) in the order given, state one of waiting, queued, running,
    submitted, skipped or how a build ended. A job is skipped when a job it needs did not succeed
    (also when that one is skipped itself: the reason names the build that did not succeed)."""
    needs = {name: job_needs for name, job_needs, _ in jobs}
    state = {name: job_state for name, _, job_state in jobs}
    cause: dict[str, str] = {}  # a skipped job's first need that did not succeed, as a phrase
    skip: dict[str, str] = {}
    for name in order(needs):
        if state[name] != WAITING:
            continue
        for need in needs[name]:
            if state[need] in _ENDED_AS:
                cause[name] = f"{need!r} {_ENDED_AS[state[need]]}"
            elif state[need] == SKIPPED:
                cause[name] = cause.get(need) or f"{need!r} was skipped"
            else:
                continue
            skip[name] = f"needs {need!r}, which " + (
                _ENDED_AS[state[need]] if state[need] in _ENDED_AS
                else f"was skipped because {cause[name]}")
            state[name] = SKIPPED
            break
    ready = [name for name, _, _ in jobs if state[name] == WAITING
             and all(state[n] == Status.SUCCEEDED.value for n in needs[name])]
    return Plan(ready, skip, all(s in ENDS for s in state.values()))


def observed_state(job: BatchJobRow, now: float) -> str:
    """A job's state as it stands: its own record, or for a submitted job its build's row. A
    build row that ended before the job was submitted is an earlier build's: the job's build is
    about to be queued ("queued"), or was never submitted ("lost") when SUBMIT_GRACE has passed."""
    if job.state != SUBMITTED:
        return job.state
    status, submitted_at = job.build_status, job.submitted_at or 0.0
    if status is not None and not status.finished:
        return status.value
    if status is not None and (job.build_finished_at or 0.0) >= submitted_at:
        return status.value
    return "lost" if now - submitted_at > SUBMIT_GRACE else Status.QUEUED.value


# --- batches in the index and the queue ----------------------------------------------------------

def create(server: Server, jobs: list[BatchJob], now: float | None = None) -> str:
    """Record a validated batch (Unprocessable naming an unknown project first) and submit the
    jobs that need nothing; the batch's id."""
    rows = []
    for position, job in enumerate(jobs):
        try:
            build_id, _ = server.key_of(job.request)
        except UnknownProject as e:
            raise Unprocessable(f"job {job.name!r}: unknown project {e.project!r} (projects: "
                                f"{', '.join(server.projects.names()) or 'none'})") from None
        r = job.request
        rows.append(BatchJobRow(batch="", name=job.name, position=position, project=r.project,
                                build_id=build_id, group=r.group, params=r.key_params(),
                                opaque=r.opaque_params(), rebuild=r.rebuild, needs=job.needs,
                                state=WAITING))
    batch_id = uuid.uuid4().hex
    server.store.create_batch(batch_id, rows, now=now)
    advance(server, batch_id, now=now)
    return batch_id


def advance(server: Server, batch_id: str, now: float | None = None) -> bool:
    """One step of a batch: record the ends of its builds, skip what cannot run, submit what
    can, close it when every job has ended. True when it is closed. Several processes may advance
    the same batch at once: each change is conditional on the state it saw."""
    store = server.store
    while True:
        at = time.time() if now is None else now
        jobs = store.batch_jobs(batch_id)
        states = {}
        for job in jobs:
            state = states[job.name] = observed_state(job, at)
            if job.state == SUBMITTED and state in ENDS:
                store.end_batch_job(batch_id, job.name, state, job.build_reason, was=SUBMITTED)
            elif state == "lost" and store.unclaim_batch_job(batch_id, job.name,
                                                             job.submitted_at or 0.0):
                log.warning("mistryd: batch %s: job %r was claimed but not submitted; "
                            "submitting it again", batch_id, job.name)
                states[job.name] = WAITING
        steps = plan([(job.name, job.needs, states[job.name]) for job in jobs])
        for name, reason in steps.skip.items():
            store.end_batch_job(batch_id, name, SKIPPED, reason, was=WAITING)
        by_name = {job.name: job for job in jobs}
        hits = 0
        for name in steps.submit:
            outcome = _submit(server, by_name[name], at)
            if outcome is _Submission.LATER:  # the others would be refused alike: next look
                break
            hits += outcome is _Submission.HIT
        if steps.done:
            store.close_batch(batch_id, now=at)
            return True
        if not hits:  # a hit has succeeded at once: its dependents may start now
            return False


class _Submission(Enum):
    HIT = "hit"  # answered from cache: it succeeded at once
    QUEUED = "queued"  # queued or joined (or submitted by another process)
    LATER = "later"  # refused for now (backlog, disk, shutting down): still waiting
    FAILED = "failed"  # refused for good: recorded as failed


def _submit(server: Server, job: BatchJobRow, now: float) -> _Submission:
    """Claim and submit one job."""
    store = server.store
    if not store.claim_batch_job(job.batch, job.name, now):
        return _Submission.QUEUED  # another process did
    request = JobRequest(job.project, {**job.params, **job.opaque}, job.group, job.rebuild)
    try:
        build_id, outcome = server.submit(request)
    except MistryError as e:
        if e.status >= 500:  # overloaded, a full disk, shutting down: the next look tries again
            store.unclaim_batch_job(job.batch, job.name, now)
            log.info("mistryd: batch %s: job %r waits: %s", job.batch, job.name, e.message)
            return _Submission.LATER
        # the project went away, or changed while its job was queued: this job cannot run
        store.end_batch_job(job.batch, job.name, Status.FAILED.value,
                            f"could not be queued: {e.message}", was=SUBMITTED)
        return _Submission.FAILED
    except BaseException:
        store.unclaim_batch_job(job.batch, job.name, now)
        raise
    hit = isinstance(outcome, Hit)
    store.batch_job_submitted(job.batch, job.name, build_id,
                              Status.SUCCEEDED.value if hit else SUBMITTED)
    return _Submission.HIT if hit else _Submission.QUEUED


class BatchDriver:
    """Advances every open batch every LOOK_EVERY seconds, in the process that collects garbage
    (one per server). A poll and not one waiting thread per build: see docs/batches.md."""

    def __init__(self, server: Server, every: float = LOOK_EVERY):
        self.server = server
        self._every = Every(every, self.look, "mistryd-batches",
                            "mistryd: the open batches could not be read")

    @classmethod
    def for_server(cls, server: Server) -> BatchDriver:
        driver = cls(server)
        driver.start()
        return driver

    def start(self) -> None:
        self._every.start()

    def stop(self) -> None:
        self._every.stop()

    def look(self) -> None:
        for batch_id in self.server.store.open_batches():
            try:
                advance(self.server, batch_id)
            except Exception:  # noqa: BLE001 - the index busy, the queue away: the next look
                log.exception("mistryd: batch %s was not advanced", batch_id)
