"""The web view's questions to the SQLite index: filtered, paginated history, counts per status,
the latest build of each group, cache use, and the charts' data (a project's recent durations and
outcomes; the cache hit rate and queue depth over time, from samples kept in the index). Every
answer is a few of the store's indexed queries; nothing here reads a build folder, so a page costs
the same with 10 builds or 100,000.
"""

from __future__ import annotations

import math
import threading
import uuid
from dataclasses import dataclass, field

from .metrics import Metrics
from .store import BuildRow, Status, Store

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class Filters:
    """What a history page shows: each field is one equality test, empty means any."""

    project: str = ""
    status: str = ""
    group: str = ""
    repository: str = ""  # push builds of this repository (docs/push.md)
    builder: str = ""  # builds this builder finished (BuildInfo.Builder)

    @classmethod
    def parse(cls, project: str = "", status: str = "", group: str = "",
              repository: str = "", builder: str = "") -> Filters:
        """Filters from query-string values. An unknown status filters to nothing rather than
        being ignored, so a mistyped link does not silently show everything."""
        return cls(project=project.strip(), status=status.strip(), group=group.strip(),
                   repository=repository.strip(), builder=builder.strip())

    @property
    def known_status(self) -> Status | None:
        """The status filter as a Status; None when there is none or it names no status."""
        try:
            return Status(self.status) if self.status else None
        except ValueError:
            return None

    def args(self, **override: str | int) -> dict[str, str | int]:
        """Query-string arguments that keep these filters (for pagination links)."""
        out: dict[str, str | int] = {k: v for k, v in (("project", self.project),
                                                        ("status", self.status),
                                                        ("group", self.group),
                                                        ("repository", self.repository),
                                                        ("builder", self.builder)) if v}
        out.update({k: v for k, v in override.items() if v not in ("", None)})
        return out

    @property
    def active(self) -> bool:
        return bool(self.project or self.status or self.group or self.repository
                    or self.builder)


@dataclass
class Page:
    rows: list[BuildRow]
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def has_prev(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages

    @property
    def first_index(self) -> int:
        """1-based position of the first row on this page (0 when empty)."""
        return (self.number - 1) * self.size + 1 if self.rows else 0

    @property
    def last_index(self) -> int:
        return (self.number - 1) * self.size + len(self.rows)


def page_of(store: Store, filters: Filters, number: int = 1, size: int = PAGE_SIZE) -> Page:
    """One page of builds, newest first. A page past the end is clamped to the last one."""
    size = max(1, min(size, MAX_PAGE_SIZE))
    if filters.status and filters.known_status is None:
        return Page(rows=[], number=1, size=size, total=0)
    project, status, group = filters.project, filters.known_status, filters.group
    total = store.count(project, status, group, filters.repository, filters.builder)
    pages = max(1, math.ceil(total / size))
    number = max(1, min(number, pages))
    rows = store.history(project, status, group, limit=size, offset=(number - 1) * size,
                         repository=filters.repository, builder=filters.builder)
    return Page(rows=rows, number=number, size=size, total=total)


def status_counts(store: Store, project: str = "") -> dict[str, int]:
    """Builds per status (every status present, zero or not)."""
    return store.status_counts(project)


def recent_finished(store: Store, limit: int = 20, project: str = "") -> list[BuildRow]:
    return store.recent_finished(limit, project)


def latest_per_group(store: Store, project: str, limit: int = 50) -> list[BuildRow]:
    """The newest build of each group of `project` ('' is the build without a group)."""
    return store.latest_per_group(project, limit)


@dataclass
class CacheUse:
    """Requests answered since this server started, from the Prometheus counters."""

    hits: int = 0
    started: int = 0
    coalesced: int = 0

    @property
    def requests(self) -> int:
        return self.hits + self.started + self.coalesced

    @property
    def rate(self) -> float | None:
        """Share of build requests that did not start a build (answered from cache or joined)."""
        return None if self.requests == 0 else (self.hits + self.coalesced) / self.requests

    @property
    def hit_rate(self) -> float | None:
        return None if self.requests == 0 else self.hits / self.requests


def cache_use(metrics: Metrics) -> CacheUse:
    hits, started, coalesced = metrics.totals(metrics.cache_hits, metrics.builds_started,
                                              metrics.builds_coalesced)
    return CacheUse(hits=hits, started=started, coalesced=coalesced)


# --- charts -------------------------------------------------------------------------------------

CHART_BUILDS = 50  # a project's chart: its newest finished builds
SAMPLE_EVERY = 60.0  # seconds between two points of the dashboard's charts, at least
KEEP_SAMPLES = 30 * 86400.0
TIMELINE_SPAN = 24 * 3600.0  # the dashboard's charts: the last day...
TIMELINE_BUCKETS = 48  # ...in half hours


def build_seconds(row: BuildRow) -> float | None:
    """How long a finished build took: its BuildInfo's Duration, else started to finished."""
    duration = (row.info or {}).get("Duration")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        return duration / 1e9
    if row.finished_at and row.started_at:
        return max(0.0, row.finished_at - row.started_at)
    return None


def project_chart(store: Store, project: str, limit: int = CHART_BUILDS) -> dict:
    """The project page's chart: its newest finished builds, oldest first, each a bar as tall as
    the build took, in one series per outcome (so each gets its colour and legend entry)."""
    rows = list(reversed(store.recent_finished(limit, project)))
    series: dict[str, list[float | None]] = {"succeeded": [], "failed": [], "other": []}
    for row in rows:
        outcome = row.status.value if row.status.value in series else "other"
        took = build_seconds(row)
        for name, values in series.items():
            values.append(took if name == outcome and took is not None else None)
    return {"project": project, "x": list(range(1, len(rows) + 1)), "ids": [r.id for r in rows],
            "at": [r.finished_at or r.queued_at for r in rows],
            "statuses": [r.status.value for r in rows], **series}


@dataclass
class Sampler:
    """Writes a point of the dashboard's charts at most every `every` seconds: the request
    counters of this process (cumulative since it started) and the queue. Asked on requests, so
    it needs no thread of its own; an idle server writes no points, and nothing changed then."""

    every: float = SAMPLE_EVERY
    process: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    _next: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self, now: float) -> bool:
        """True for one caller once `every` has passed (the others go on at once)."""
        if now < self._next:
            return False
        with self._lock:
            if now < self._next:
                return False
            self._next = now + self.every
            return True

    def sample(self, store: Store, use: CacheUse, queued: int, running: int, now: float) -> None:
        store.record_sample(now, self.process, use.hits, use.started, use.coalesced, queued,
                            running, KEEP_SAMPLES)

    def current(self, use: CacheUse, queued: int, running: int, now: float) -> dict:
        """This moment as a point (not stored): the charts' last bucket is up to date."""
        return {"at": now, "process": self.process, "hits": use.hits, "started": use.started,
                "coalesced": use.coalesced, "queued": queued, "running": running}


def timeline(store: Store, now: float, current: dict | None = None, span: float = TIMELINE_SPAN,
             buckets: int = TIMELINE_BUCKETS) -> dict:
    """The dashboard's charts: per time bucket, the share of build requests answered from the
    cache (None with no requests) and the longest queue seen (None with no point in it). A
    process's counters start at 0, so a point's change is measured against the point before it of
    the same process, and the first point of a process counts from 0. `current` (this moment,
    from `Sampler.current`) is counted as the last point."""
    start = now - span
    width = span / buckets
    hits = [0] * buckets
    requests = [0] * buckets
    queue: list[int | None] = [None] * buckets
    last: dict[str, tuple[int, int, int]] = {}
    points = list(store.samples_since(start)) + ([current] if current else [])
    for row in points:
        before = last.get(row["process"], (0, 0, 0))
        now_counts = (row["hits"], row["started"], row["coalesced"])
        last[row["process"]] = now_counts
        if row["at"] < start:
            continue
        i = min(buckets - 1, int((row["at"] - start) // width))
        d_hits, d_started, d_coalesced = (max(0, a - b) for a, b in zip(now_counts, before,
                                                                        strict=True))
        hits[i] += d_hits
        requests[i] += d_hits + d_started + d_coalesced
        queue[i] = max(queue[i] or 0, row["queued"])
    return {"t": [start + (i + 1) * width for i in range(buckets)],
            "hit_rate": [round(100 * h / r, 1) if r else None for h, r in zip(hits, requests,
                                                                              strict=True)],
            "requests": requests, "queued": queue}
