"""Prometheus metrics with upstream mistry's names, in a registry of the server's own."""

from __future__ import annotations

import threading
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class UpstreamCounter:
    """A per-project counter exposed under upstream's exact name. prometheus_client would add
    `_total` to a Counter, which breaks dashboards built on upstream, so this one is exposed
    untyped with the name as it was."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self._values: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, project: str) -> _Child:
        return _Child(self, project)

    def value(self, project: str) -> float:
        return self._values.get(project, 0.0)

    def collect(self):
        metric = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            for project, value in sorted(self._values.items()):
                metric.add_sample(self.name, {"project": project}, value)
        yield metric


class _Child:
    def __init__(self, counter: UpstreamCounter, project: str):
        self.counter, self.project = counter, project

    def inc(self, amount: float = 1) -> None:
        with self.counter._lock:
            self.counter._values[self.project] += amount


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.builds_hosted = Gauge("mistry_builds_hosted", "Builds kept on disk", registry=r)
        self.builds_started = UpstreamCounter("mistry_builds_started", "Builds started", r)
        self.builds_finished = UpstreamCounter("mistry_builds_finished", "Builds finished", r)
        self.builds_coalesced = UpstreamCounter(
            "mistry_builds_coalesced", "Requests that joined a build in flight", r)
        self.builds_incremental = UpstreamCounter(
            "mistry_builds_processed_incrementally", "Builds started from a group's cache", r)
        self.cache_hits = UpstreamCounter(
            "mistry_cache_utilization", "Requests answered from the result cache", r)
        self.succeeded_seconds = Histogram("mistry_builds_succeeded_seconds",
                                           "Duration of successful builds", ["project"],
                                           buckets=BUCKETS, registry=r)
        self.failed_seconds = Histogram("mistry_builds_failed_seconds",
                                        "Duration of failed builds", ["project"],
                                        buckets=BUCKETS, registry=r)
        self.queued = Gauge("mistryd_jobs_queued", "Builds waiting for a worker", registry=r)
        self.running = Gauge("mistryd_jobs_running", "Builds running", registry=r)
        self.rejected = Counter("mistryd_jobs_rejected", "Requests refused because the backlog "
                                "was full", registry=r)
        self.builds_refused = Counter(
            "mistryd_builds_refused", "Builds refused after they ran: their /data folders were "
            "swapped for links or files", ["project"], registry=r)
        self.request_slots = Gauge(
            "mistryd_request_slots", "Request threads that long requests of each kind may hold "
            "at once (waits: build waiters and log followers; artifacts: manifests and .tar)",
            ["kind"], registry=r)
        self.request_slots_in_use = Gauge(
            "mistryd_request_slots_in_use", "Request threads held by long requests of each kind",
            ["kind"], registry=r)
        self.request_slots_refused = Counter(
            "mistryd_request_slots_refused", "Long requests answered 503 because every slot of "
            "their kind was taken", ["kind"], registry=r)
        self.evicted = Counter("mistryd_builds_evicted", "Builds removed by garbage collection",
                               registry=r)
