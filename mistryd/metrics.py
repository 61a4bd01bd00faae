"""Prometheus metrics with upstream mistry's names, in a registry of the server's own.

With builder processes (config `builder_processes`), builds are counted where they run and hits
where they are answered: every process keeps its values in prometheus_client's multiprocess files
(`share_between_processes`, before prometheus_client is imported), and /metrics and the dashboard
add them up, so their figures are the whole server's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable


def share_between_processes(folder: Path) -> None:
    """Keep this process's metric values in `folder`, beside its other processes' (the processes
    it starts inherit it). Call it before the first metric is made."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROCESS_DIR] = str(folder)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()  # prometheus_client read the variable at import


def forget_other_processes() -> None:
    """At the start of a server (build_path's lock held): the values of earlier processes go, so
    counters start at zero with the server, as in one process."""
    folder = os.environ.get(MULTIPROCESS_DIR)
    if not folder:
        return
    mine = f"_{os.getpid()}.db"
    for entry in Path(folder).iterdir():
        if entry.name.endswith(".db") and not entry.name.endswith(mine):
            entry.unlink(missing_ok=True)


def process_gone(pid: int) -> None:
    """A process that shared its values died: its live gauges stop counting."""
    if os.environ.get(MULTIPROCESS_DIR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class UpstreamCounter:
    """A per-project counter exposed under upstream's exact name (exposition renames it:
    prometheus_client would add `_total`, which breaks dashboards built on upstream)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry):
        self.name = name
        self._counter = Counter(name, documentation, ["project"], registry=registry)
        UPSTREAM_NAMES.add(name)

    def labels(self, project: str):
        return self._counter.labels(project)

    def value(self, project: str) -> float:
        """This process's count for `project`."""
        return sum(s.value for m in self._counter.collect() for s in m.samples
                   if s.name == self.name + "_total" and s.labels.get("project") == project)


UPSTREAM_NAMES: set[str] = set()


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        # set by the serving process, added to by builders, taken from by GC: the sum is right
        self.builds_hosted = Gauge("mistry_builds_hosted", "Builds kept on disk", registry=r,
                                   multiprocess_mode="sum")
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
        # the queue's own counts, set by whichever process saw the last change
        self.queued = Gauge("mistryd_jobs_queued", "Builds waiting for a worker", registry=r,
                            multiprocess_mode="mostrecent")
        self.running = Gauge("mistryd_jobs_running", "Builds running", registry=r,
                             multiprocess_mode="mostrecent")
        self.rejected = Counter("mistryd_jobs_rejected", "Requests refused because the backlog "
                                "was full", registry=r)
        self.builds_refused = Counter(
            "mistryd_builds_refused", "Builds refused after they ran: their /data folders were "
            "swapped for links or files", ["project"], registry=r)
        self.request_slots = Gauge(
            "mistryd_request_slots", "Request threads that long requests of each kind may hold "
            "at once (waits: build waiters and log followers; artifacts: manifests and .tar)",
            ["kind"], registry=r, multiprocess_mode="livemax")  # the whole server's, in each
        self.request_slots_in_use = Gauge(
            "mistryd_request_slots_in_use", "Request threads held by long requests of each kind",
            ["kind"], registry=r, multiprocess_mode="livesum")
        self.request_slots_refused = Counter(
            "mistryd_request_slots_refused", "Long requests answered 503 because every slot of "
            "their kind was taken", ["kind"], registry=r)
        self.evicted = Counter("mistryd_builds_evicted", "Builds removed by garbage collection",
                               registry=r)
        self.notifications = Counter(
            "mistryd_notifications", "Push builds' notifications and commit statuses by kind "
            "(notification, status) and outcome (sent; retried: an attempt failed; failed: every "
            "attempt did)", ["kind", "outcome"], registry=r)
        # builders (docs/distributed.md)
        self.builds_by_builder = Counter(
            "mistryd_builds_by_builder", "Builds finished, by the builder that ran them",
            ["builder"], registry=r)
        self.jobs_redelivered = Counter(
            "mistryd_jobs_redelivered", "Jobs queued again because their builder was lost",
            registry=r)
        self.upload_bytes = Counter(
            "mistryd_upload_bytes", "Bytes of build results uploaded by builders elsewhere",
            ["builder"], registry=r)
        self.upload_seconds = Histogram(
            "mistryd_upload_seconds", "How long an upload of a build's results took, landing "
            "included", ["builder"], registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf")))

    def _source(self) -> CollectorRegistry:
        """Every process's values when they are shared, else this process's."""
        folder = os.environ.get(MULTIPROCESS_DIR)
        if not folder:
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, folder)
        return registry

    def exposition(self, extra: Iterable[Metric] = ()) -> bytes:
        """/metrics: the text format, upstream's counters under their own names; `extra`:
        figures made at scrape time (builders by state, queue depth)."""
        return generate_latest(_Renamed(self._source(), tuple(extra)))

    def totals(self, *counters: UpstreamCounter) -> list[int]:
        """Each counter's sum over its projects, in every process (the files read once)."""
        sums = {c.name: 0.0 for c in counters}
        for metric in self._source().collect():
            if metric.name in sums:
                sums[metric.name] += sum(s.value for s in metric.samples
                                         if s.name == metric.name + "_total")
        return [int(sums[c.name]) for c in counters]


def builders_by_state(states: Iterable[str]) -> Metric:
    """`mistryd_builders{state}`: how many builders are idle, busy and lost now."""
    counts = dict.fromkeys(("idle", "busy", "lost"), 0)
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    family = GaugeMetricFamily("mistryd_builders", "Builders by state (idle, busy, lost: "
                               "silent for longer than builder_timeout)", labels=["state"])
    for state, n in counts.items():
        family.add_metric([state], n)
    return family


class _Renamed:
    """A registry's metrics with upstream's counters as upstream exposes them: the bare name, no
    `_created`, untyped."""

    def __init__(self, source: CollectorRegistry, extra: tuple[Metric, ...] = ()):
        self.source = source
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from self.extra
        for metric in self.source.collect():
            if metric.name not in UPSTREAM_NAMES:
                yield metric
                continue
            renamed = Metric(metric.name, metric.documentation, "unknown")
            for sample in metric.samples:
                if sample.name == metric.name + "_total":
                    renamed.add_sample(metric.name, sample.labels, sample.value)
            yield renamed
