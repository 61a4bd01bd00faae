"""The queue between the API tier and the builders: one interface (`JobQueue`), an embedded
backend on the SQLite index for one machine, and an in-memory twin for tests. docs/queue.md."""

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

__all__ = ["LEASE_SECONDS", "MAX_INTERRUPTIONS", "Admission", "Cancelled", "EmbeddedQueue", "InFlight",
           "JobKey", "JobQueue", "Lease", "LeaseLost", "MemoryQueue", "Outcome", "Peek",
           "QueueStats"]
