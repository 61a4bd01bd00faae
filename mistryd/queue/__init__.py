"""The queue between the API tier and the builders: one interface (`JobQueue`), an embedded
backend on the SQLite index for one machine, an in-memory twin for tests, and `RedisQueue` (RQ on
Redis) for builders on many machines. docs/queue.md, docs/distributed.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    LEASE_SECONDS,
    MAX_INTERRUPTIONS,
    Admission,
    Cancelled,
    InFlight,
    JobKey,
    JobQueue,
    Lease,
    LeaseLost,
    Outcome,
    Peek,
    QueueStats,
    builder_of,
)
from .embedded import EmbeddedQueue
from .indexed import IndexedQueue
from .memory import MemoryQueue

if TYPE_CHECKING:
    from ..store import Store
    from .redis import RedisQueue

__all__ = ["LEASE_SECONDS", "MAX_INTERRUPTIONS", "Admission", "Cancelled", "EmbeddedQueue", "InFlight",
           "IndexedQueue", "JobKey", "JobQueue", "Lease", "LeaseLost", "MemoryQueue", "Outcome", "Peek",
           "QueueStats", "RedisQueue", "builder_of"]


def open_queue(url: str | None, store: Store) -> JobQueue:
    """The server's queue: the embedded one on its index (`url` None), or the shared one on
    Redis that the index follows (config `queue`)."""
    if url is None:
        return EmbeddedQueue(store)
    from .redis import RedisQueue

    return IndexedQueue(RedisQueue(url), store)


def __getattr__(name: str) -> Any:
    # imported on first use: RQ and redis-py are the optional extra `redis`, which the embedded
    # default does not need
    if name == "RedisQueue":
        from .redis import RedisQueue

        return RedisQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
