"""The queue between the API tier and the builders: one interface (`JobQueue`), an embedded
backend on the SQLite index for one machine, an in-memory twin for tests, and `RedisQueue` (RQ on
Redis) for builders on many machines. docs/queue.md, docs/distributed.md."""

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
)
from .embedded import EmbeddedQueue
from .memory import MemoryQueue

if TYPE_CHECKING:
    from .redis import RedisQueue

__all__ = ["LEASE_SECONDS", "MAX_INTERRUPTIONS", "Admission", "Cancelled", "EmbeddedQueue", "InFlight",
           "JobKey", "JobQueue", "Lease", "LeaseLost", "MemoryQueue", "Outcome", "Peek",
           "QueueStats", "RedisQueue"]


def __getattr__(name: str) -> Any:
    # imported on first use: RQ and redis-py are the optional extra `redis`, which the embedded
    # default does not need
    if name == "RedisQueue":
        from .redis import RedisQueue

        return RedisQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
