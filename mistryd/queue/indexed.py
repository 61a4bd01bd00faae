"""The central server's queue when builders share one on Redis: the shared queue holds the truth
of what is queued and running (for every builder, on any machine), and the central index (the
history, the pages) follows it.

Every write the central server makes goes to the shared queue first and then to the index
(submit: a queued row; a take by a builder of its own: running; finish, a cancel that ends a
queued job: the record). What happens elsewhere (a remote builder's take, a lease that ran out and
was taken again, a job abandoned after too many lost builders) reaches the index through
`reconcile`, which the coordinating process runs every few seconds and at start-up: it compares
every unfinished row with the shared queue and mends the row, or queues the job again when the
shared queue lost it (a Redis without persistence, flushed, or replaced). Nothing is lost either
way: a job is in the shared queue, or its row says it is unfinished and it is queued again.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..store import BuildRow, Status, Store
from .base import Admission, Cancelled, JobKey, Lease, LeaseLost, Outcome, builder_of

if TYPE_CHECKING:
    from .redis import RedisQueue

log = logging.getLogger("mistryd")


def holders_key(queue_name: str = "mistryd") -> str:
    """The Redis hash naming the builder of each group's last good build ("project\tgroup"):
    that builder holds the group's cache, and a remote builder leaves it the group's next job
    for a moment (mistryd/remote/worker.py)."""
    return f"mistryd:queue:{queue_name}:holders"


class IndexedQueue:
    def __init__(self, shared: RedisQueue, store: Store):
        self.shared = shared
        self.store = store

    def __getattr__(self, name: str) -> Any:  # the questions and the builders' side, as they are
        return getattr(self.shared, name)

    def submit(self, key: JobKey, request: dict, *, backlog: int | None = None,
               seen=None, now: float | None = None) -> Admission:
        at = time.time() if now is None else now
        answer = self.shared.submit(key, request, backlog=backlog, seen=seen, now=at)
        if answer is Admission.QUEUED:
            self.store.record_queued(key.project, key.id, request.get("group", ""),
                                     request.get("params", {}), bool(request.get("rebuild")),
                                     now=at)
        return answer

    def take(self, builder: str, *args: Any, **kwargs: Any) -> Lease | None:
        lease = self.shared.take(builder, *args, **kwargs)
        if lease is not None:
            self.store.record_running(lease.key.project, lease.key.id, now=lease.started_at)
        return lease

    def finish(self, lease: Lease, outcome: Outcome, now: float | None = None) -> None:
        self.shared.finish(lease, outcome, now=now)  # LeaseLost: nothing recorded
        self._record(lease.key, outcome, now)
        if outcome.status is Status.SUCCEEDED:  # the group's next build: preferably there
            builder = builder_of(lease.builder) or ""  # the builder, not its worker thread
            self.shared.redis.hset(holders_key(), f"{lease.key.project}\t"
                                   f"{lease.request.get('group', '')}", builder)

    def cancel(self, key: JobKey, reason: str, info: dict | None = None,
               now: float | None = None, **kwargs: Any) -> Cancelled:
        answer = self.shared.cancel(key, reason, info, now=now, **kwargs)
        if answer is Cancelled.ENDED:
            outcome = self.shared.wait(key, timeout=0)
            if outcome is not None:
                self._record(key, outcome, now)
        return answer

    def _record(self, key: JobKey, outcome: Outcome, now: float | None) -> None:
        self.store.record_finished(key.project, key.id, outcome.status, outcome.info or {},
                                   outcome.reason, now=now)

    def reconcile(self) -> int:
        """Mend every unfinished row from the shared queue; the number of rows changed."""
        changed = 0
        for row in self.store.unfinished():
            try:
                changed += self._mend(row)
            except LeaseLost:
                pass
            except Exception:  # noqa: BLE001 - the next look mends it
                log.exception("mistryd: the index row of %s/%s was not mended", row.project,
                              row.id)
        return changed

    def _mend(self, row: BuildRow) -> int:
        key = JobKey(row.project, row.id)
        peek = self.shared.peek(key)
        if peek.status is None:  # the shared queue does not know it (lost): queue it again
            request = {"project": row.project, "params": {**row.params, **row.opaque},
                       "group": row.group, "rebuild": row.rebuild}
            self.shared.submit(key, request, now=row.queued_at)
            log.warning("mistryd: job %s was unknown to the shared queue; queued again", key)
            return 1
        if peek.status is row.status:
            return 0
        if peek.status is Status.RUNNING:
            found = self.shared.job(key)
            self.store.record_running(row.project, row.id,
                                      now=found.started_at if found and found.started_at else None)
            return 1
        if peek.status is Status.QUEUED:  # its builder was lost: queued again
            self.store.record_queued(row.project, row.id, row.group,
                                     {**row.params, **row.opaque}, row.rebuild, now=row.queued_at)
            return 1
        outcome = self.shared.wait(key, timeout=0)
        if outcome is None:
            return 0
        self._record(key, outcome, None)
        return 1
