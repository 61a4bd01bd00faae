"""The central server's watch over a shared queue (config `queue`), in the process that also
collects garbage: every few seconds it

- gives the jobs of builders silent for longer than `builder_timeout` back to the queue (their
  leases run out; `reap` queues them again, or ends them abandoned after too many losses), and
  ends the leases of builders the registry knows are lost at once;
- mends the index from the shared queue (`IndexedQueue.reconcile`: takes by remote builders, jobs
  queued again, ends recorded elsewhere, jobs a Redis without persistence forgot);
- publishes the settings remote builders take from the central server (`builder_timeout`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from .every import Every
from .queue import IndexedQueue

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("mistryd")
LOOK_EVERY = 2.0  # seconds between two looks


def settings_key(queue_name: str = "mistryd") -> str:
    """The Redis key of the settings a central server publishes for its builders (JSON)."""
    return f"mistryd:queue:{queue_name}:settings"


class Coordinator:
    def __init__(self, server: Server, queue: IndexedQueue):
        self.server = server
        self.queue = queue
        self._every = Every(LOOK_EVERY, self.look, "mistryd-coordinator",
                            "mistryd: the look over the shared queue failed")
        self._dropped: set[str] = set()  # lost builders whose leases were ended already

    @classmethod
    def for_server(cls, server: Server) -> Coordinator | None:
        """A coordinator when the server's queue is shared; None with the embedded queue."""
        if not isinstance(server.queue, IndexedQueue):
            return None
        return cls(server, server.queue)

    def start(self) -> None:
        self._every.start()

    def stop(self) -> None:
        self._every.stop()

    def look(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        config = self.server.config
        self.queue.shared.redis.set(settings_key(), json.dumps(
            {"builder_timeout": config.builder_timeout, "central": config.name}))
        self._drop_lost(now)
        requeued = self.queue.reap(now)
        if requeued:
            self.server.metrics.jobs_redelivered.inc(len(requeued))
            log.warning("mistryd: %d job(s) of silent builders queued again: %s", len(requeued),
                        ", ".join(map(str, requeued)))
        self.queue.reconcile()

    def _drop_lost(self, now: float) -> None:
        lost = {b.name for b in self.server.registry.builders()
                if b.state(now, self.server.config.builder_timeout) == "lost"}
        for name in lost - self._dropped:
            keys = self.queue.drop_builder(f"{name}-")
            log.warning("mistryd: builder %s is lost (silent for more than %gs)%s", name,
                        self.server.config.builder_timeout,
                        f"; its jobs are queued again: {', '.join(map(str, keys))}" if keys else "")
        self._dropped = lost
