"""The request threads' dispatcher (mistryd/web/threads.py) on real threads, with tasks that
stand for requests: how many run at once, stepping aside, which thread takes the next one, and
shutdown."""

import threading
import time

import pytest
from support import wait_for

from mistryd.web.threads import BoundedDispatcher, step_aside


class Request:
    """A task as waitress hands it over: service() runs the request."""

    def __init__(self, tracker, body=None):
        self.tracker, self.body = tracker, body
        self.done = threading.Event()
        self.thread = None
        self.cancelled = False

    def service(self):
        self.thread = threading.current_thread().name
        with self.tracker.lock:
            self.tracker.now += 1
            self.tracker.most = max(self.tracker.most, self.tracker.now)
        try:
            if self.body:
                self.body()
        finally:
            with self.tracker.lock:
                self.tracker.now -= 1
            self.done.set()

    def cancel(self):
        self.cancelled = True


class Tracker:
    def __init__(self):
        self.lock = threading.Lock()
        self.now = self.most = 0


@pytest.fixture
def dispatcher():
    made = []

    def make(limit, threads, stall=60):
        d = BoundedDispatcher(limit, stall=stall)
        d.set_thread_count(threads)
        wait_for(lambda: d.active_count == 0, interval=0.01)  # every thread started and idle
        made.append(d)
        return d

    yield make
    for d in made:
        d.shutdown(cancel_pending=True, timeout=5)
        assert not d.threads


def test_no_more_than_the_limit_run_at_once_and_the_rest_wait_their_turn(dispatcher):
    d, tracker, release = dispatcher(3, 16), Tracker(), threading.Event()
    requests = [Request(tracker, lambda: release.wait(60)) for _ in range(10)]
    for r in requests:
        d.add_task(r)
    wait_for(lambda: tracker.now == 3, interval=0.01)
    assert len(d.queue) == 7
    release.set()
    for r in requests:
        assert r.done.wait(10)
    assert tracker.most == 3


def test_a_request_that_steps_aside_lets_a_queued_one_run(dispatcher):
    d, tracker = dispatcher(1, 4), Tracker()
    waiting, quick_done = threading.Event(), threading.Event()

    def long_wait():
        step_aside()
        step_aside()  # twice counts once
        waiting.set()
        assert quick_done.wait(10)

    long = Request(tracker, long_wait)
    d.add_task(long)
    assert waiting.wait(10)
    quick = Request(tracker, quick_done.set)
    d.add_task(quick)
    assert quick.done.wait(10) and long.done.wait(10)
    assert d.running == 0
    # the bound holds again afterwards: one at a time
    release = threading.Event()
    later = [Request(tracker, lambda: release.wait(60)) for _ in range(3)]
    tracker.most = 0
    for r in later:
        d.add_task(r)
    wait_for(lambda: tracker.now == 1, interval=0.01)
    assert len(d.queue) == 2
    release.set()
    assert all(r.done.wait(10) for r in later) and tracker.most == 1


def test_requests_held_up_without_saying_so_let_queued_ones_start_after_the_stall(dispatcher):
    d, tracker, release = dispatcher(2, 8, stall=0.2), Tracker(), threading.Event()
    stuck = [Request(tracker, lambda: release.wait(60)) for _ in range(2)]  # say nothing
    for r in stuck:
        d.add_task(r)
    wait_for(lambda: tracker.now == 2, interval=0.01)
    quick = [Request(tracker) for _ in range(5)]
    started = time.monotonic()
    for r in quick:
        d.add_task(r)
    assert all(r.done.wait(30) for r in quick)
    assert time.monotonic() - started >= 0.1  # not before the stall: the bound held until then
    assert not any(r.done.is_set() for r in stuck)
    release.set()
    assert all(r.done.wait(30) for r in stuck) and d.running == 0


def test_one_after_another_requests_stay_on_the_thread_that_ran_last(dispatcher):
    d, tracker = dispatcher(4, 32), Tracker()
    threads = set()
    for _ in range(20):
        r = Request(tracker)
        d.add_task(r)
        assert r.done.wait(10)
        threads.add(r.thread)
        wait_for(lambda: d.active_count == 0, interval=0.01)  # idle again before the next
    assert len(threads) == 1, threads


def test_step_aside_outside_a_request_thread_does_nothing(dispatcher):
    d = dispatcher(2, 2)
    step_aside()
    assert d.running == 0


def test_shutdown_ends_every_thread_and_cancels_what_waits(dispatcher):
    d, tracker, release = dispatcher(1, 8), Tracker(), threading.Event()
    busy = Request(tracker, lambda: release.wait(60))
    queued = Request(tracker)
    d.add_task(busy)
    d.add_task(queued)
    wait_for(lambda: tracker.now == 1, interval=0.01)
    stopper = threading.Thread(target=d.shutdown, kwargs={"cancel_pending": True, "timeout": 5})
    stopper.start()
    time.sleep(0.2)
    release.set()
    stopper.join(10)
    assert not d.threads and busy.done.is_set()
    assert queued.cancelled or queued.done.is_set()


def test_fewer_threads_stop_idle_ones_and_the_rest_keep_serving(dispatcher):
    d, tracker = dispatcher(2, 8), Tracker()
    d.set_thread_count(2)
    wait_for(lambda: len(d.threads) == 2, interval=0.01)
    requests = [Request(tracker) for _ in range(5)]
    for r in requests:
        d.add_task(r)
    assert all(r.done.wait(10) for r in requests)
