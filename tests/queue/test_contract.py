"""The queue's promises (docs/queue.md), checked against every backend in one process. Clocks are
passed in (`now`) where a lease runs out, so nothing here sleeps."""

from __future__ import annotations

import threading

import pytest

from mistryd.errors import Overloaded
from mistryd.queue import (
    MAX_INTERRUPTIONS,
    Admission,
    Cancelled,
    JobKey,
    LeaseLost,
    Outcome,
    Peek,
    QueueStats,
)
from mistryd.store import Status

A, B, C = JobKey("p", "a"), JobKey("p", "b"), JobKey("q", "c")
T = 1_000_000.0  # a clock for the tests that pass one in


def request(key: JobKey, **params: str) -> dict:
    return {"project": key.project, "params": params, "group": "", "rebuild": False}


def done(status: Status = Status.SUCCEEDED, exit_code: int = 0) -> Outcome:
    return Outcome(status, {"ExitCode": exit_code, "Status": status.value}, "")


def test_identical_submissions_join_one_job(backend):
    q, other = backend.open(), backend.open()
    assert q.submit(A, request(A)) is Admission.QUEUED
    assert other.submit(A, request(A)) is Admission.JOINED
    assert q.submit(B, request(B)) is Admission.QUEUED
    assert q.stats() == QueueStats(queued=2, running=0)
    assert q.peek(A).in_flight and not q.peek(C).in_flight


def test_the_backlog_bounds_new_jobs_but_not_joining(backend):
    q = backend.open()
    q.submit(A, request(A), backlog=1)
    with pytest.raises(Overloaded):
        q.submit(B, request(B), backlog=1)
    assert q.submit(A, request(A), backlog=1) is Admission.JOINED
    q.take("b1")  # a running job leaves the backlog
    assert q.submit(B, request(B), backlog=1) is Admission.QUEUED


def test_a_job_that_ended_since_the_callers_peek_is_not_queued_again(backend):
    q = backend.open()
    seen = q.peek(A)
    assert seen == Peek(None, None)
    q.submit(A, request(A))
    q.finish(q.take("b1"), done())
    assert q.submit(A, request(A), seen=seen) is Admission.ENDED  # ask the cache again
    assert q.submit(A, request(A), seen=q.peek(A)) is Admission.QUEUED  # it was not servable
    q.finish(q.take("b1"), done())
    assert q.submit(A, request(A), seen=None) is Admission.QUEUED  # a rebuild


def test_the_oldest_job_is_taken_first_under_a_lease(backend):
    q = backend.open()
    for key, at in ((B, T), (A, T + 1), (C, T + 2)):
        q.submit(key, request(key, n="1"), now=at)
    assert q.position(B) == 0 and q.position(C) == 2
    lease = q.take("b1", now=T + 5)
    assert lease.key == B and lease.builder == "b1" and lease.request == request(B, n="1")
    assert lease.started_at == T + 5 and lease.queued_at == T and lease.interruptions == 0
    assert q.position(B) is None and q.position(A) == 0
    assert q.take("b2", exclude=[A], now=T + 6).key == C  # A waits for what this taker knows
    assert q.take("b2", now=T + 7).key == A
    assert q.take("b3", now=T + 8) is None
    assert q.stats() == QueueStats(queued=0, running=3)


def test_opaque_params_reach_the_builder(backend):
    q = backend.open()
    q.submit(A, request(A, env="prod", _token="secret"))
    assert q.take("b1").request["params"] == {"env": "prod", "_token": "secret"}


def test_every_waiter_gets_the_outcome(backend):
    q = backend.open()
    q.submit(A, request(A))
    assert q.wait(A, timeout=0) is None
    lease = q.take("b1")
    got: list[Outcome | None] = []
    waiters = [threading.Thread(target=lambda: got.append(backend.open().wait(A, timeout=30)))
               for _ in range(10)]
    for w in waiters:
        w.start()
    q.finish(lease, done(Status.FAILED, 3))
    for w in waiters:
        w.join(30)
    assert len(got) == 10 and {o.status for o in got} == {Status.FAILED}
    assert {o.info["ExitCode"] for o in got} == {3}
    assert q.wait(A, timeout=0).status is Status.FAILED  # at once, once it has ended
    assert q.stats() == QueueStats(0, 0) and not q.peek(A).in_flight


def test_a_lost_lease_is_taken_again_and_its_finish_refused(backend):
    q = backend.open()
    q.submit(A, request(A), now=T)
    first = q.take("b1", lease_seconds=10, now=T)
    assert q.take("b2", lease_seconds=10, now=T + 5) is None  # b1's lease holds
    assert q.heartbeat(first, lease_seconds=10, now=T + 8) is None  # ...and is renewed
    assert q.take("b2", lease_seconds=10, now=T + 15) is None
    second = q.take("b2", lease_seconds=10, now=T + 19)  # b1 went quiet at T+8
    assert second.key == A and second.token > first.token and second.interruptions == 1
    with pytest.raises(LeaseLost):
        q.heartbeat(first, now=T + 20)
    with pytest.raises(LeaseLost):
        q.finish(first, done(), now=T + 20)
    assert q.wait(A, timeout=0) is None  # nothing was recorded by the lost builder
    q.finish(second, done(Status.FAILED, 1), now=T + 21)
    assert q.wait(A, timeout=0).status is Status.FAILED
    with pytest.raises(LeaseLost):  # nothing finishes twice
        q.finish(second, done(), now=T + 22)
    assert q.wait(A, timeout=0).status is Status.FAILED


def test_a_job_whose_builders_keep_dying_is_abandoned(backend):
    q = backend.open()
    q.submit(A, request(A), now=T)
    at = T
    for _ in range(MAX_INTERRUPTIONS):
        assert q.take("b", lease_seconds=1, now=at).key == A
        at += 2
    assert q.take("b", lease_seconds=1, now=at) is None
    outcome = q.wait(A, timeout=0)
    assert outcome.status is Status.ABANDONED and "interrupted" in outcome.reason


def test_reap_every_lease_at_start_up(backend):
    q = backend.open()
    q.submit(A, request(A), now=T)
    q.take("dead", lease_seconds=3600, now=T)
    assert q.reap(now=T + 1) == []
    assert q.reap(now=T + 1, every_lease=True) == [A]
    assert q.take("b", now=T + 2).interruptions == 1


def test_a_dead_builders_jobs_are_taken_again_at_once(backend):
    q = backend.open()
    q.submit(A, request(A), now=T)
    q.submit(B, request(B), now=T + 1)
    q.submit(C, request(C), now=T + 2)
    gone_a, gone_b = q.take("builder-7-0", 3600, now=T), q.take("builder-7-1", 3600, now=T)
    alive = q.take("builder-70-0", 3600, now=T)  # another builder whose name starts alike
    assert sorted(q.drop_builder("builder-7-")) == [A, B]
    again = q.take("builder-8-0", 3600, now=T + 3)
    assert again.key == A and again.interruptions == 1 and again.token > gone_a.token
    assert q.take("builder-8-1", 3600, now=T + 3).key == B
    with pytest.raises(LeaseLost):
        q.finish(gone_b, done(), now=T + 4)
    q.finish(alive, done(), now=T + 4)  # untouched
    assert q.wait(C, timeout=0).status is Status.SUCCEEDED
    assert q.drop_builder("builder-7-") == []


def test_a_running_jobs_log_file_is_known_to_every_reader(backend):
    q = backend.open()
    q.submit(A, request(A), now=T)
    assert q.log_file(A) is None
    lease = q.take("b", 3600, now=T)
    assert q.log_file(A) is None  # not opened yet
    q.note_log(lease, "64:1234")
    assert backend.open().log_file(A) == "64:1234"  # another process's view of the queue
    q.finish(lease, done(), now=T + 1)
    assert q.log_file(A) is None
    with pytest.raises(LeaseLost):
        q.note_log(lease, "64:99")
    q.submit(A, request(A), now=T + 2)  # a rebuild: its own log, none known yet
    assert q.take("b", 3600, now=T + 2) is not None and q.log_file(A) is None


def test_release_puts_a_job_back_where_it_was(backend):
    q = backend.open()
    q.submit(A, request(A), now=T)
    q.submit(B, request(B), now=T + 1)
    lease = q.take("b1", now=T + 2)
    q.release(lease)
    again = q.take("b1", now=T + 3)
    assert again.key == A and again.interruptions == 0
    with pytest.raises(LeaseLost):
        q.release(lease)


def test_cancelling_a_queued_job_ends_it_at_once(backend):
    q = backend.open()
    q.submit(A, request(A))
    record = {"ExitCode": -999, "Status": "cancelled", "ErrBuild": "changed my mind"}
    assert q.cancel(A, "changed my mind", record) is Cancelled.ENDED
    outcome = q.wait(A, timeout=0)
    assert outcome.status is Status.CANCELLED and outcome.reason == "changed my mind"
    assert outcome.info["ExitCode"] == -999
    assert q.take("b1") is None
    assert q.cancel(A, "again") is Cancelled.NOT_IN_FLIGHT
    assert q.cancel(C, "unknown") is Cancelled.NOT_IN_FLIGHT


def test_cancelling_a_running_job_reaches_its_builder(backend):
    q = backend.open()
    q.submit(A, request(A))
    lease = q.take("b1")
    heard: list[str | None] = []
    listener = threading.Thread(target=lambda: heard.append(q.wait_for_cancel(lease, 30)))
    listener.start()
    assert backend.open().cancel(A, "stop it") is Cancelled.REQUESTED
    listener.join(30)
    assert heard == ["stop it"]
    assert q.heartbeat(lease) == "stop it"
    assert q.wait(A, timeout=0) is None  # the builder ends it, with its own record
    q.finish(lease, Outcome(Status.CANCELLED, {"ExitCode": 137}, "stop it"))
    assert q.wait(A, timeout=0).status is Status.CANCELLED


def test_a_cancelled_job_whose_builder_died_ends_cancelled(backend):
    q = backend.open()
    q.submit(A, request(A), now=T)
    q.take("dead", lease_seconds=1, now=T)
    q.cancel(A, "stop it", now=T)
    assert q.reap(now=T + 2) == []
    assert q.wait(A, timeout=0).status is Status.CANCELLED


def test_waiting_for_cancel_times_out_quietly(backend):
    q = backend.open()
    q.submit(A, request(A))
    assert q.wait_for_cancel(q.take("b1"), timeout=0.01) is None


def test_close_wakes_takers_and_waiters(backend):
    q = backend.open()
    q.submit(A, request(A))
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(q.wait(A))),
               threading.Thread(target=lambda: results.append(q.take("b1", exclude=[A],
                                                                     timeout=None)))]
    for t in threads:
        t.start()
    q.close()
    for t in threads:
        t.join(30)
    assert results == [None, None]


def test_a_taker_is_woken_by_new_work(backend):
    q = backend.open()
    taken: list[object] = []
    taker = threading.Thread(target=lambda: taken.append(q.take("b1", timeout=30)))
    taker.start()
    backend.open().submit(A, request(A))
    taker.join(30)
    assert [lease.key for lease in taken] == [A]


def test_jobs_in_flight_are_listed_oldest_first_with_their_builder(backend):
    q, other = backend.open(), backend.open()
    q.submit(A, request(A, _secret="s", x="1"), now=T)
    q.submit(B, request(B), now=T + 1)
    lease = q.take("b1", now=T + 2)
    assert lease is not None and lease.key == A
    listed = other.jobs()
    assert [(j.key, j.status, j.builder) for j in listed] == [
        (A, Status.RUNNING, "b1"), (B, Status.QUEUED, None)]
    assert listed[0].request["params"] == {"_secret": "s", "x": "1"}  # enough to make the job
    assert listed[0].queued_at == T and listed[0].started_at == T + 2
    assert other.job(B) == listed[1] and other.job(C) is None
    q.finish(lease, done())
    assert [j.key for j in other.jobs()] == [B] and other.job(A) is None
    assert [j.key for j in other.jobs(limit=0)] == []


def test_a_builder_takes_only_what_it_accepts(backend):
    q, other = backend.open(), backend.open()
    q.submit(A, request(A, size="big"))
    q.submit(B, request(B))

    def small(r: dict) -> bool:
        return r["params"].get("size") != "big"

    first = q.take("small-0", accept=small)
    assert first.key == B  # A stays queued, first in line, for a builder that has the label
    assert q.take("small-0", accept=small, timeout=0) is None
    assert q.position(A) == 0
    woken: list = []
    taker = threading.Thread(target=lambda: woken.append(
        q.take("small-0", accept=small, timeout=10)))
    taker.start()
    other.submit(C, request(C, size="big"))  # a job arriving meanwhile: checked too
    other.submit(JobKey("q", "d"), request(JobKey("q", "d")))
    taker.join(15)
    assert [lease.key for lease in woken] == [JobKey("q", "d")]
    assert other.take("big-0", accept=lambda r: True).key == A


def test_the_lease_a_running_job_is_held_under(backend):
    q, other = backend.open(), backend.open()
    q.submit(A, request(A, v="1"), now=T)
    assert other.lease_of(A) is None  # queued
    lease = q.take("b1-0", now=T + 1)
    held = other.lease_of(A)
    assert (held.builder, held.token, held.key) == ("b1-0", lease.token, A)
    assert held.request["params"] == {"v": "1"}
    q.finish(lease, done())
    assert other.lease_of(A) is None
