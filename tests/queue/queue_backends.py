"""The queue backends under test, and how a child process opens its own handle on one."""

from __future__ import annotations

from pathlib import Path

from support import RedisServer

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
