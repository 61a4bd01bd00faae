"""How a build being waited for is doing, for the status line: a thread asks the server
(`GET /job/<project>/<id>`, on a connection of its own) about once a second, while the main
thread follows the log. Only on a terminal: a pipe gets no status line and no extra requests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .errors import ClientError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import Client

EVERY = 1.0  # seconds between questions


@dataclass
class JobState:
    status: str = "submitted"  # then queued, running (as the server says)
    position: int | None = None  # queued: 1 = next to start
    length: int = 0  # queued: how many are queued
    joined: bool = False
    since: float = field(default_factory=time.monotonic)  # when `status` began, this clock
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def elapsed(self) -> float:
        return max(0.0, time.monotonic() - self.since)

    def saw(self, view: dict) -> None:
        """The server's JobView: status, queue place and how long (by its clock) it has been so."""
        status = view.get("Status")
        if status not in ("queued", "running"):
            return  # finished: the log's end says so to the waiting thread
        with self.lock:
            elapsed = view.get("Elapsed")
            if isinstance(elapsed, int | float):
                self.since = time.monotonic() - elapsed
            elif status != self.status:
                self.since = time.monotonic()
            self.status = status
            position = view.get("QueuePosition")
            self.position = position if isinstance(position, int) else None
            length = view.get("QueueLength")
            self.length = length if isinstance(length, int) else 0

    def running(self) -> None:
        """A log line came: the build runs (the log starts when it does)."""
        with self.lock:
            if self.status != "running":
                self.status, self.position, self.since = "running", None, time.monotonic()


class Watcher:
    def __init__(self, client: Client, project: str, build_id: str, state: JobState):
        self.client = client.with_own_connection()
        self.client.connect_timeout = 5.0
        self.project = project
        self.build_id = build_id
        self.state = state
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mistry-watch", daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(1.0)  # a request under way ends with the process (a daemon thread)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                view = self.client.job(self.project, self.build_id)
            except ClientError:
                view = None  # the waiting thread reports what matters; this only paints a line
            if view is not None and not self.stopped.is_set():
                self.state.saw(view)
            self.stopped.wait(EVERY)
