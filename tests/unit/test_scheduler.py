"""The scheduler's decisions, with a plain function in place of the builder (no Docker)."""

import threading
from pathlib import Path

import pytest

from mistryd.builder import Job
from mistryd.config import ProjectSettings
from mistryd.errors import Overloaded, ShuttingDown
from mistryd.jobs import BuildInfo, JobRequest
from mistryd.scheduler import Scheduler, Ticket, may_queue

SETTINGS = ProjectSettings(build_timeout=0, memory=None, cpus=None, pids_limit=None,
                           network_mode="none")


def job(build_id: str, project: str = "p") -> Job:
    return Job(request=JobRequest(project), id=build_id, fingerprint="f", context=Path("/"),
               settings=SETTINGS)


def info(j: Job, exit_code: int = 0) -> BuildInfo:
    return BuildInfo(ID=j.id, Project=j.project, Params={}, Group="", Path="", URL=j.url,
                     StartedAt="", ExitCode=exit_code)


class Gate:
    """A build function that blocks until released, counting how many builds ran."""

    def __init__(self, exit_code=0):
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.runs: list[str] = []
        self.exit_code = exit_code

    def __call__(self, j: Job) -> BuildInfo:
        self.runs.append(j.id)
        self.started.release()
        assert self.release.wait(10)
        return info(j, self.exit_code)


def test_admission_rule():
    assert may_queue(0, 1)
    assert not may_queue(1, 1)
    assert not may_queue(0, 0)


@pytest.mark.parametrize("exit_code", [0, 1])
def test_identical_requests_share_one_build_and_its_outcome(exit_code):
    gate = Gate(exit_code)
    s = Scheduler(gate, concurrency=2, backlog=4)
    s.start()
    tickets = [s.submit(job("a")) for _ in range(20)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert [t.coalesced for t in tickets].count(False) == 1
    gate.release.set()
    results = [t.flight.wait(10) for t in tickets]
    assert gate.runs == ["a"]
    assert {r.ExitCode for r in results} == {exit_code}
    s.stop()


def test_backlog_full_is_overloaded_but_joining_is_not():
    gate = Gate()
    s = Scheduler(gate, concurrency=1, backlog=1)
    s.start()
    s.submit(job("running"))
    assert gate.started.acquire(timeout=5)
    s.submit(job("queued"))
    with pytest.raises(Overloaded):
        s.submit(job("third"))
    assert s.submit(job("queued")).coalesced  # joining a queued build needs no room
    gate.release.set()
    s.stop()


def test_a_build_finished_meanwhile_is_answered_from_cache():
    gate = Gate()
    s = Scheduler(gate, concurrency=1, backlog=1)
    s.start()
    hit = info(job("x"))
    assert s.submit(job("x"), cached=lambda: hit) is hit
    assert isinstance(s.submit(job("x"), cached=lambda: hit, force=True), Ticket)
    gate.release.set()
    s.stop()


def test_concurrency_limit_is_kept():
    lock = threading.Lock()
    running = []
    peak = []
    release = threading.Event()

    def build(j):
        with lock:
            running.append(j.id)
            peak.append(len(running))
        release.wait(0.05)
        with lock:
            running.remove(j.id)
        return info(j)

    s = Scheduler(build, concurrency=2, backlog=20)
    s.start()
    tickets = [s.submit(job(str(i))) for i in range(10)]
    for t in tickets:
        t.flight.wait(10)
    assert max(peak) <= 2
    assert len(peak) == 10
    s.stop()


def test_cancelling_a_queued_build_answers_its_waiters_at_once():
    gate = Gate()
    cancelled = []

    def on_cancel(j):
        cancelled.append(j.id)
        return info(j, exit_code=-999)

    s = Scheduler(gate, concurrency=1, backlog=5, on_cancel_queued=on_cancel)
    s.start()
    s.submit(job("running"))
    assert gate.started.acquire(timeout=5)
    waiting = s.submit(job("queued"))
    flight = s.cancel("p", "queued", "changed my mind")
    assert flight is waiting.flight and waiting.flight.wait(5).ExitCode == -999
    assert waiting.flight.job.cancel_reason == "changed my mind"
    assert cancelled == ["queued"] and s.in_flight("p", "queued") is None
    running = s.cancel("p", "running", "stop")
    assert running.job.cancel.is_set()  # the builder stops the container
    assert s.cancel("p", "nothing", "x") is None
    gate.release.set()
    s.stop()
    assert gate.runs == ["running"]


def test_stop_waits_for_running_builds_then_cancels_them():
    gate = Gate()
    s = Scheduler(gate, concurrency=1, backlog=5)
    s.start()
    running = s.submit(job("a"))
    assert gate.started.acquire(timeout=5)
    queued = s.submit(job("b"))
    threading.Timer(0.1, gate.release.set).start()
    s.stop(grace=5)
    assert running.flight.result is not None  # finished within the grace period
    assert queued.flight.done.is_set() and queued.flight.result is None
    assert gate.runs == ["a"]
    with pytest.raises(ShuttingDown):
        s.submit(job("c"))


def test_the_cache_is_asked_outside_the_lock_and_again_when_a_build_finished_meanwhile():
    """Asking the cache reads files (and may write usage to the index): never under the
    scheduler's lock. A build of the same job that starts and ends while the cache is asked (so
    the answer missed it, and it is no longer in flight) makes admission ask again instead of
    building it a second time."""
    gate = Gate()
    gate.release.set()
    s = Scheduler(gate, concurrency=1, backlog=4)
    s.start()
    answers: list[str] = []

    def cached():
        assert s._lock.acquire(blocking=False), "the cache was asked under the scheduler's lock"
        s._lock.release()
        if not answers:  # this look misses; meanwhile another request builds the job to its end
            other = s.submit(job("a"))
            assert isinstance(other, Ticket) and other.flight.wait(10) is not None
            answers.append("miss")
            return None
        answers.append("hit")
        return "HIT"

    assert s.submit(job("a"), cached=cached) == "HIT"
    assert answers == ["miss", "hit"] and gate.runs == ["a"]
    s.stop()
