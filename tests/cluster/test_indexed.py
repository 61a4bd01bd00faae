"""The central index follows the shared queue (mistryd/queue/indexed.py), against a real
redis-server: what the central server does is recorded at once, what happens elsewhere (a remote
builder's take and finish, a lease that ran out, a Redis that forgot everything) at the next
reconcile."""

from __future__ import annotations

import pytest

from mistryd.layout import Layout
from mistryd.queue import Admission, Cancelled, IndexedQueue, JobKey, Outcome
from mistryd.queue.indexed import holders_key
from mistryd.queue.redis import RedisQueue
from mistryd.store import Status, Store

KEY = JobKey("p", "a" * 64)
REQUEST = {"project": "p", "params": {"v": "1", "_secret": "x"}, "group": "g", "rebuild": False}


@pytest.fixture
def central(redis_server, tmp_path):
    redis_server.flush()
    store = Store(Layout(tmp_path / "builds"))
    queue = IndexedQueue(RedisQueue(redis_server.url), store)
    yield queue
    queue.close()


@pytest.fixture
def elsewhere(redis_server):
    """A remote builder's own handle on the shared queue."""
    queue = RedisQueue(redis_server.url)
    yield queue
    queue.close()


def status(central: IndexedQueue, key: JobKey = KEY) -> Status | None:
    row = central.store.get(key.project, key.id)
    return None if row is None else row.status


def test_the_central_servers_own_steps_are_recorded_at_once(central):
    assert central.submit(KEY, REQUEST) is Admission.QUEUED
    row = central.store.get(KEY.project, KEY.id)
    assert row.status is Status.QUEUED and row.opaque == {"_secret": "x"}
    assert central.submit(KEY, REQUEST) is Admission.JOINED
    lease = central.take("central.1-0", timeout=0)
    assert lease is not None and status(central) is Status.RUNNING
    central.finish(lease, Outcome(Status.SUCCEEDED, {"ID": KEY.id, "Group": "g"}))
    assert status(central) is Status.SUCCEEDED
    assert central.shared.redis.hget(holders_key(), "p\tg") == b"central.1"


def test_a_queued_job_cancelled_is_recorded(central):
    central.submit(KEY, REQUEST)
    assert central.cancel(KEY, "no longer needed") is Cancelled.ENDED
    row = central.store.get(KEY.project, KEY.id)
    assert row.status is Status.CANCELLED and row.reason == "no longer needed"


def test_what_happens_elsewhere_reaches_the_index_at_reconcile(central, elsewhere):
    central.submit(KEY, REQUEST)
    lease = elsewhere.take("remote-0", timeout=0)
    assert lease is not None and status(central) is Status.QUEUED
    assert central.reconcile() == 1 and status(central) is Status.RUNNING
    assert central.reconcile() == 0
    elsewhere.finish(lease, Outcome(Status.FAILED, {"ID": KEY.id}, "exit code 1"))
    assert central.reconcile() == 1 and status(central) is Status.FAILED


def test_a_lost_lease_goes_back_to_queued(central, elsewhere):
    central.submit(KEY, REQUEST)
    elsewhere.take("remote-0", lease_seconds=30, timeout=0, now=1000.0)
    central.reconcile()
    assert central.drop_builder("remote-") == [KEY]
    assert central.reap() == [KEY]
    assert central.reconcile() == 1 and status(central) is Status.QUEUED


def test_a_job_the_shared_queue_forgot_is_queued_again(central, redis_server):
    central.submit(KEY, REQUEST)
    redis_server.flush()  # a Redis without persistence, restarted
    assert central.peek(KEY).status is None
    assert central.reconcile() == 1
    assert central.peek(KEY).status is Status.QUEUED
    lease = central.take("central.1-0", timeout=0)
    assert lease.request["params"] == REQUEST["params"]  # opaque params kept by the index
