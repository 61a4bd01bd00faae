"""The request threads of one API process: waitress's task dispatcher, with a bound on how many
of them run at once.

mistryd keeps many request threads (`http_threads`), because a synchronous build request, a log
follower or a `.tar` stream holds one for as long as it lasts. But Python runs one thread at a
time: a cache hit answered while dozens of threads take turns with the interpreter lock, each
woken in turn from a cold start (waitress wakes its idle threads first-in, first-out), costs far
more than the same hit on a few threads kept busy. Measured with 2 API processes, 8 clients and
512 threads, cached `POST /jobs` went from about 2,200 to about 3,900 answers a second with the
bound below (docs/performance.md has the figures).

So at most RUNNING requests run at once; the next one waits in waitress's queue, and the thread
that finishes takes it (no wake-up needed while work is queued). An idle thread is woken last in,
first out, so the same few threads stay warm. A request that is going to wait steps aside
(`step_aside`): it no longer counts against the bound, and a queued request starts in its place.
It does so when it takes a slot for a long request (web/capacity.py: build waiters, log
followers, artifact streams) and whenever its answer waits for a slow client to take the bytes
already written (web/http.py); it counts as stepped aside until its request ends. And a request
that runs for STALL seconds while others queue is presumed waiting on something it did not say
(a lock, a slow disk), and stepped aside for: however the running requests are held up, the
queue moves.
"""

from __future__ import annotations

import threading
import time

from waitress.task import ThreadedTaskDispatcher

RUNNING = 4  # requests of one process running at once (2 to 16 measured: 4 was best, 2 close)
STALL = 0.05  # seconds a request may run before it is presumed waiting, while others queue

_dispatcher = threading.local()  # .current: the BoundedDispatcher of a request thread


class BoundedDispatcher(ThreadedTaskDispatcher):
    """waitress's dispatcher (the same threads, queue and shutdown), which starts a queued task
    only while fewer than `running_limit` tasks run, not stepped aside. A task that runs for
    STALL seconds while others queue is presumed waiting on something nobody said (a lock, a
    slow disk) and no longer counts: whatever holds the running requests up, the queue moves."""

    def __init__(self, running_limit: int = RUNNING, stall: float = STALL):
        super().__init__()
        self.running_limit = running_limit
        self.stall = stall
        self._running: dict[int, float] = {}  # thread -> since when, for tasks that count
        self._waking = 0  # idle threads woken that have not taken a task yet
        self._idle: list[threading.Lock] = []  # each idle thread waits on its own lock: LIFO
        self._watch = threading.Condition(self.lock)  # the watcher: told when a task queues
        self._watcher: threading.Thread | None = None
        self._watching = False  # the watcher looks every `stall` seconds (tasks are queued)
        self._closing = False

    @property
    def running(self) -> int:
        return len(self._running)

    def handler_thread(self, thread_no: int) -> None:
        wake = threading.Lock()
        wake.acquire()
        me = threading.get_ident()
        _dispatcher.current = self
        while True:
            with self.lock:
                while (not self.queue or self.running >= self.running_limit) and not self.stop_count:
                    self.active_count -= 1
                    self._idle.append(wake)
                    self.lock.release()
                    wake.acquire()
                    self.lock.acquire()
                    self._waking -= 1
                    self.active_count += 1
                if self.stop_count:
                    self.active_count -= 1
                    self.stop_count -= 1
                    self.threads.discard(thread_no)
                    self.thread_exit_cv.notify()
                    break
                task = self.queue.popleft()
                self._running[me] = time.monotonic()
                self._wake_one()  # a request taken by a woken thread may leave more to start
            try:
                task.service()
            except BaseException:
                self.logger.exception("Exception when servicing %r", task)
            with self.lock:
                self._running.pop(me, None)

    def step_aside(self) -> None:
        with self.lock:
            if self._running.pop(threading.get_ident(), None) is not None:
                self._wake_one()

    def _wake_one(self) -> bool:
        """Wake the most recently idle thread if a queued task may start and no woken thread
        is on its way to it already. Called with the lock held."""
        if (self._idle and self.running + self._waking < self.running_limit
                and len(self.queue) > self._waking):
            self._waking += 1
            self._idle.pop().release()
            return True
        return False

    def add_task(self, task) -> None:
        with self.lock:
            self.queue.append(task)
            if not self._wake_one() and not self._watching:
                self._watch.notify()

    def _watch_stalls(self) -> None:
        with self.lock:
            while not self._closing:
                if not self.queue or self.running < self.running_limit:
                    self._watching = False
                    self._watch.wait()
                    continue
                self._watching = True
                self._watch.wait(self.stall)
                now = time.monotonic()
                for thread, since in list(self._running.items()):
                    if now - since >= self.stall:
                        del self._running[thread]
                while self._wake_one():
                    pass

    def set_thread_count(self, count: int) -> None:
        with self.lock:
            stopping = max(0, len(self.threads) - self.stop_count - count)
            if count and self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_stalls, daemon=True,
                                                 name="waitress-stalls")
                self._watcher.start()
            if not count:
                self._closing = True
                self._watch.notify()
        super().set_thread_count(count)
        with self.lock:  # threads told to stop must wake to see it
            for _ in range(min(stopping, len(self._idle))):
                self._waking += 1
                self._idle.pop().release()


def step_aside() -> None:
    """The request on this thread is going to wait (for a build, a log line, a slow client):
    let a queued request run in its place. Does nothing outside a BoundedDispatcher's thread."""
    dispatcher = getattr(_dispatcher, "current", None)
    if dispatcher is not None:
        dispatcher.step_aside()
