"""The web view's questions to the SQLite index: filtered, paginated history, counts per status,
the latest build of each group, cache use. Every answer is a few of the store's indexed queries;
nothing here reads a build folder, so a page costs the same with 10 builds or 100,000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import Counter

from .metrics import Metrics, UpstreamCounter
from .store import BuildRow, Status, Store

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class Filters:
    """What a history page shows: each field is one equality test, empty means any."""

    project: str = ""
    status: str = ""
    group: str = ""

    @classmethod
    def parse(cls, project: str = "", status: str = "", group: str = "") -> Filters:
        """Filters from query-string values. An unknown status filters to nothing rather than
        being ignored, so a mistyped link does not silently show everything."""
        return cls(project=project.strip(), status=status.strip(), group=group.strip())

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
                                                        ("group", self.group)) if v}
        out.update({k: v for k, v in override.items() if v not in ("", None)})
        return out

    @property
    def active(self) -> bool:
        return bool(self.project or self.status or self.group)


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
    total = store.count(project, status, group)
    pages = max(1, math.ceil(total / size))
    number = max(1, min(number, pages))
    rows = store.history(project, status, group, limit=size, offset=(number - 1) * size)
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


def _counter_total(counter: Counter | UpstreamCounter) -> int:
    """The sum over all label sets. A prometheus_client Counter names its samples `<name>_total`
    (and adds `<name>_created`); upstream-named counters use the bare name."""
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name in (metric.name, metric.name + "_total"):
                total += sample.value
    return int(total)


def cache_use(metrics: Metrics) -> CacheUse:
    return CacheUse(hits=_counter_total(metrics.cache_hits),
                    started=_counter_total(metrics.builds_started),
                    coalesced=_counter_total(metrics.builds_coalesced))
