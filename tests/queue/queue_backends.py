"""The queue backends under test, how a child process opens its own handle on one, and the real
`redis-server` the Redis backend runs against."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import redis
from support import free_port

from mistryd.layout import Layout
from mistryd.queue import EmbeddedQueue, JobQueue, MemoryQueue
from mistryd.store import Store

Spec = tuple[str, str]  # (backend, where its data lives): picklable, for child processes


def open_queue(spec: Spec) -> JobQueue:
    """A new handle on the queue `spec` names (in this process or a child)."""
    kind, where = spec
    if kind == "embedded":
        return EmbeddedQueue(Store(Layout(Path(where))))
    if kind == "redis":
        from mistryd.queue.redis import RedisQueue

        return RedisQueue(where)
    raise ValueError(f"no backend {kind!r} for other processes")


class RedisServer:
    """A real `redis-server` on loopback, on a free port, with its data in `folder` and
    persistence on as docs/distributed.md asks for it (append-only file, fsync at every write):
    it can be stopped (gracefully or killed) and started again on the same port and data."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start; see {self.folder / 'redis.log'}")
            time.sleep(0.05)
        client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis shuts down as on a service restart; SIGKILL: a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.wait(30)
        self._process = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()


class Backend:
    """Handles on one queue: `open()` gives another one, as another process or thread of the
    API tier would have. `redis`: the server a Redis backend keeps its queue in."""

    def __init__(self, kind: str, tmp_path: Path, redis_server: RedisServer | None = None):
        self.kind = kind
        where = redis_server.url if kind == "redis" and redis_server else str(tmp_path / "builds")
        self.spec: Spec = (kind, where)
        self._shared = MemoryQueue() if kind == "memory" else None
        self._opened: list[JobQueue] = []

    def open(self) -> JobQueue:
        q = self._shared if self._shared is not None else open_queue(self.spec)
        self._opened.append(q)
        return q

    def close(self) -> None:
        for q in self._opened:
            q.close()


ALL = ["memory", "embedded", "redis"]
ACROSS_PROCESSES = ["embedded", "redis"]
