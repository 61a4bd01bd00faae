"""What only the Redis backend promises, against a real redis-server: build keys as RQ job ids,
queued and running jobs surviving a Redis restart (a graceful one and a crash), waiters hearing an
end across a restart, and RQ's own tools working on mistryd's queue (docs/distributed.md)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from queue_backends import RedisServer
from support import wait_for

from mistryd.queue import Admission, Cancelled, JobKey, Outcome, QueueStats
from mistryd.queue.redis import RedisQueue, job_key, rq_job_id
from mistryd.queue.wakeups import SAFETY_LOOK
from mistryd.store import Status

A, B = JobKey("p", "a"), JobKey("p", "b")
RQ = Path(sys.executable).parent / "rq"


def request(key: JobKey) -> dict:
    return {"project": key.project, "params": {"x": "1"}, "group": "g", "rebuild": False}


@pytest.fixture
def server(tmp_path) -> RedisServer:
    s = RedisServer(tmp_path / "redis")
    yield s
    s.stop()


@pytest.fixture
def open_queue(server):
    opened: list[RedisQueue] = []

    def make() -> RedisQueue:
        opened.append(RedisQueue(server.url))
        return opened[-1]

    yield make
    for q in opened:
        q.close()


@pytest.mark.parametrize("key", [JobKey("hello", "3fa2c0"), JobKey("my.proj", "a_b"),
                                 JobKey("p__q", "__"), JobKey("grüße", "x y/z")])
def test_build_keys_are_rq_job_ids(open_queue, key):
    job_id = rq_job_id(key)
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in job_id)
    assert job_key(job_id) == key
    q = open_queue()
    assert q.submit(key, request(key)) is Admission.QUEUED
    assert q.redis.exists(f"rq:job:{job_id}")  # the key is the engine's own job id
    lease = q.take("b1")
    assert lease.key == key and [j.key for j in q.jobs()] == [key]
    q.finish(lease, Outcome(Status.SUCCEEDED, {"ExitCode": 0}))
    assert q.wait(key, timeout=0).status is Status.SUCCEEDED


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_queued_and_running_jobs_survive_a_redis_restart(server, open_queue, how):
    q = open_queue()
    q.submit(A, request(A))
    q.submit(B, request(B))
    running = q.take("b1")
    server.restart(how)
    again = open_queue()
    assert again.stats() == QueueStats(queued=1, running=1)
    assert [(j.key, j.status) for j in again.jobs()] == [(A, Status.RUNNING), (B, Status.QUEUED)]
    assert again.take("b2").key == B
    # the handle from before the restart connects again: its builder heartbeats and finishes
    assert q.heartbeat(running) is None
    q.finish(running, Outcome(Status.SUCCEEDED, {"ExitCode": 0}))
    assert again.wait(A, timeout=0).info == {"ExitCode": 0}


def test_a_waiter_hears_the_end_across_a_redis_restart(server, open_queue):
    q = open_queue()
    q.submit(A, request(A))
    lease = q.take("b1")
    heard: list[tuple[float, Outcome | None]] = []
    waiter = open_queue()
    listening = threading.Thread(target=lambda: heard.append((0, waiter.wait(A, timeout=60))))
    listening.start()
    server.restart()
    ended = time.monotonic()
    q.finish(lease, Outcome(Status.FAILED, {"ExitCode": 2}))
    listening.join(60)
    assert heard and heard[0][1] is not None and heard[0][1].status is Status.FAILED
    # heard by the subscription made again, or at worst by the safety look, never by a timeout
    assert time.monotonic() - ended < SAFETY_LOOK + 2


def _rq_info(server: RedisServer) -> str:
    """RQ's own monitor on our queue (it also cleans up the registries, as rq-dashboard does)."""
    done = subprocess.run([str(RQ), "info", "--url", server.url, "mistryd"], capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout


def test_rqs_own_tools_see_the_queue_and_their_clean_up_agrees_with_ours(server, open_queue):
    q = open_queue()
    q.submit(A, request(A))
    q.submit(B, request(B))
    first = q.take("b1", lease_seconds=3)
    assert "mistryd" in _rq_info(server) and "1 executing" in _rq_info(server)
    # the lease runs out; RQ's clean-up (whole seconds on its clock) finds the execution expired
    # and retries the job: mistryd's reap is not what moves it here
    wait_for(lambda: _rq_info(server) and q.job(A).status is Status.QUEUED, timeout=20)
    assert q.position(A) == 0  # back at the front
    second = q.take("b2", lease_seconds=3)
    assert second.key == A and second.interruptions == 1 and second.token > first.token
    assert q.cancel(A, "stop it") is Cancelled.REQUESTED
    # lost with a cancel asked for: RQ fails it (no retry left), mistryd reads it cancelled
    wait_for(lambda: _rq_info(server) and not q.peek(A).in_flight, timeout=20)
    outcome = q.wait(A, timeout=0)
    assert outcome is not None and outcome.status is Status.CANCELLED and outcome.reason == "stop it"
    assert q.stats() == QueueStats(queued=1, running=0)
