"""The queue's promises across real processes (forked; each opens its own handle on the queue):
coalescing, prompt waiting, lease expiry after a builder is killed, cancel reaching a builder in
another process. Run against every backend that serves several processes."""

from __future__ import annotations

import os
import signal
import time

import pytest
from queue_backends import Spec, open_queue

from mistryd.queue import Admission, JobKey, LeaseLost, Outcome
from mistryd.store import Status

A = JobKey("p", "a")
REQUEST = {"project": "p", "params": {}, "group": "", "rebuild": False}
WAITERS = 50


def _submit(spec: Spec, start, answers) -> None:
    q = open_queue(spec)
    start.wait(30)
    answers.put(q.submit(A, REQUEST).value)


def _wait(spec: Spec, ready, answers) -> None:
    q = open_queue(spec)
    ready.put(os.getpid())
    outcome = q.wait(A, timeout=60)
    answers.put((time.monotonic(), outcome.status.value if outcome else None))


def _take_and_hold(spec: Spec, lease_seconds: float, events) -> None:
    """A builder that takes a job, says so, and then never heartbeats (it is killed or
    stopped); when let go on, it tries to finish. `events`: a pipe (it writes at once, where a
    multiprocessing queue's feeder thread would be stopped with the process)."""
    q = open_queue(spec)
    lease = q.take("doomed", lease_seconds=lease_seconds, timeout=30)
    events.send(("took", lease.token))
    os.kill(os.getpid(), signal.SIGSTOP)
    try:
        q.finish(lease, Outcome(Status.SUCCEEDED, {"ExitCode": 0}))
        events.send(("finished", lease.token))
    except LeaseLost:
        events.send(("refused", lease.token))


def _received(pipe, timeout: float = 60):
    assert pipe.poll(timeout), "the child said nothing"
    return pipe.recv()


def _take_and_listen(spec: Spec, events) -> None:
    q = open_queue(spec)
    lease = q.take("listener", timeout=30)
    events.put(("took", time.monotonic()))
    reason = q.wait_for_cancel(lease, timeout=60)
    events.put((reason, time.monotonic()))
    q.finish(lease, Outcome(Status.CANCELLED, {"ExitCode": 137}, reason or ""))


def test_identical_requests_in_many_processes_queue_one_job(shared_backend, processes):
    context = processes.context
    start, answers = context.Event(), context.Queue()
    for _ in range(12):
        processes(_submit, shared_backend.spec, start, answers)
    start.set()
    got = sorted(answers.get(timeout=60) for _ in range(12))
    assert got.count(Admission.QUEUED.value) == 1 and got.count(Admission.JOINED.value) == 11
    assert shared_backend.open().stats().queued == 1


def test_fifty_waiters_in_other_processes_hear_the_end_promptly(shared_backend, processes):
    """The issue's bar: the last of 50 waiters (each in its own process) has the outcome within
    50 ms of the build's end. Asserted with room for a loaded machine, but far below the safety
    look (5 s) that a lost wakeup would fall back to; the figure is printed."""
    q = shared_backend.open()
    q.submit(A, REQUEST)
    lease = q.take("b1")
    context = processes.context
    ready, answers = context.Queue(), context.Queue()
    for _ in range(WAITERS):
        processes(_wait, shared_backend.spec, ready, answers)
    for _ in range(WAITERS):
        ready.get(timeout=120)
    ended = time.monotonic()
    q.finish(lease, Outcome(Status.SUCCEEDED, {"ExitCode": 0}))
    got = [answers.get(timeout=60) for _ in range(WAITERS)]
    assert {status for _, status in got} == {"succeeded"}
    last = max(at for at, _ in got) - ended
    print(f"\nlast of {WAITERS} waiters in other processes heard the end after {last * 1000:.1f} ms")
    assert last < 1.0


def test_a_killed_builders_job_is_taken_again_and_a_stopped_builders_finish_refused(
        shared_backend, processes):
    q = shared_backend.open()
    q.submit(A, REQUEST)
    events, child_end = processes.context.Pipe(duplex=False)
    stopped = processes(_take_and_hold, shared_backend.spec, 0.5, child_end)
    assert _received(events)[0] == "took"
    # nobody rings when a lease runs out: the taker wakes for the expiry by itself
    again = q.take("rescuer", lease_seconds=30, timeout=30)
    assert again is not None and again.key == A and again.interruptions == 1
    os.kill(stopped.pid, signal.SIGCONT)  # the lost builder wakes up and tries to finish
    assert _received(events)[0] == "refused"
    assert q.wait(A, timeout=0) is None
    q.finish(again, Outcome(Status.SUCCEEDED, {"ExitCode": 0}))
    assert q.wait(A, timeout=0).status is Status.SUCCEEDED

    # and killed outright (-9) while running: the same
    q.submit(JobKey("p", "b"), REQUEST, seen=None)
    killed = processes(_take_and_hold, shared_backend.spec, 0.5, child_end)
    assert _received(events)[0] == "took"
    killed.kill()
    killed.join(10)
    rescued = q.take("rescuer", lease_seconds=30, timeout=30)
    assert rescued is not None and rescued.key == JobKey("p", "b")


def test_a_cancel_reaches_a_builder_in_another_process_at_once(shared_backend, processes):
    q = shared_backend.open()
    q.submit(A, REQUEST)
    events = processes.context.Queue()
    processes(_take_and_listen, shared_backend.spec, events)
    assert events.get(timeout=60)[0] == "took"
    asked = time.monotonic()
    q.cancel(A, "stop it")
    reason, heard = events.get(timeout=60)
    assert reason == "stop it"
    assert heard - asked < 1.0  # heard, not found at the next heartbeat
    outcome = q.wait(A, timeout=60)
    assert outcome.status is Status.CANCELLED and outcome.info["ExitCode"] == 137


@pytest.mark.parametrize("builders", [3])
def test_builders_in_other_processes_are_woken_by_new_work(shared_backend, processes, builders):
    events = processes.context.Queue()
    for _ in range(builders):
        processes(_take_and_listen, shared_backend.spec, events)
    q = shared_backend.open()
    for i in range(builders):
        q.submit(JobKey("p", str(i)), REQUEST)
    assert [events.get(timeout=60)[0] for _ in range(builders)] == ["took"] * builders
    assert q.stats().running == builders
