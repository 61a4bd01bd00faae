"""Prometheus metrics with upstream mistry's names, in a registry of the server's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.builds_hosted = Gauge("mistry_builds_hosted", "Builds kept on disk", registry=r)
        self.builds_started = Counter("mistry_builds_started", "Builds started", ["project"],
                                      registry=r)
        self.builds_finished = Counter("mistry_builds_finished", "Builds finished", ["project"],
                                       registry=r)
        self.builds_coalesced = Counter("mistry_builds_coalesced", "Requests that joined a "
                                        "running build", ["project"], registry=r)
        self.builds_incremental = Counter("mistry_builds_processed_incrementally",
                                          "Builds that started from a group's cache",
                                          ["project"], registry=r)
        self.cache_hits = Counter("mistry_cache_utilization", "Requests answered from the "
                                  "result cache", ["project"], registry=r)
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
