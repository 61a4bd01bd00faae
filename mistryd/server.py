"""The server object: wires config, store, storage, Docker, scheduler and metrics together, and
answers the one question every entry point asks: `request(JobRequest)`."""

from __future__ import annotations

import logging
from pathlib import Path

from .builder import Builder, Job
from .config import Config
from .docker_runner import DockerRunner
from .errors import Overloaded
from .jobs import BuildInfo, JobRequest, job_key
from .layout import LOG_FILE, Layout
from .metrics import Metrics
from .projects import Projects
from .scheduler import Scheduler, Ticket
from .storage import make_storage
from .store import Status, Store

log = logging.getLogger("mistryd")


class Server:
    def __init__(self, config: Config, runner: DockerRunner | None = None):
        self.config = config
        self.layout = Layout(config.build_path)
        self.projects = Projects(config.projects_path)
        self.storage = make_storage(config.filesystem, config.build_path)
        self.store = Store(self.layout)
        self.metrics = Metrics()
        self.runner = runner or DockerRunner(config)
        self.builder = Builder(self.layout, self.store, self.storage, self.runner, self.metrics)
        self.scheduler = Scheduler(self.builder.run, config.job_concurrency, config.backlog,
                                   on_change=self._queue_changed, on_queue=self._record_queued)
        self.started = False

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Clean what a previous process left, then take work."""
        self.recover()
        self.scheduler.start()
        self.metrics.builds_hosted.set(self.store.count("status IN ('succeeded', 'failed')"))
        self.started = True
        log.info("mistryd: storage=%s build_path=%s projects=%s", self.storage.name,
                 self.config.build_path, ", ".join(self.projects.names()) or "(none)")

    def stop(self) -> None:
        self.scheduler.stop(timeout=5)

    def recover(self) -> None:
        removed = 0
        for pending_dir in self.layout.root.glob("*/pending/*"):
            self.storage.remove(pending_dir)
            removed += 1
        orphans = self.runner.remove_orphans()
        unfinished = self.store.mark_unfinished(Status.ABANDONED,
                                                "mistryd stopped before the build finished")
        if removed or orphans or unfinished:
            log.warning("mistryd: removed %d pending folder(s), %d orphaned container(s); "
                        "%d unfinished build(s) recorded as abandoned",
                        removed, len(orphans), len(unfinished))

    # --- requests -----------------------------------------------------------------------------

    def make_job(self, request: JobRequest) -> Job:
        context = self.projects.path(request.project)
        fingerprint = self.projects.fingerprint(request.project)
        return Job(request=request, id=job_key(request, fingerprint), fingerprint=fingerprint,
                   context=context)

    def cached(self, project: str, build_id: str) -> BuildInfo | None:
        """The finished, successful build with this id, marked as answered from cache."""
        raw = self.layout.read_info(project, build_id)
        if raw is None or raw.get("ExitCode") != 0:
            return None
        info = BuildInfo.from_json(raw)
        info.Cached = True
        info.Coalesced = False
        return info

    def submit(self, request: JobRequest) -> tuple[Job, Ticket | BuildInfo]:
        """A cached BuildInfo at once, or a Ticket for a build in flight (joined or new)."""
        job = self.make_job(request)
        if not request.rebuild:
            hit = self.cached(job.project, job.id)
            if hit is not None:
                return job, self._hit(hit)

        def cached_now() -> BuildInfo | None:
            hit = self.cached(job.project, job.id)
            return self._hit(hit) if hit is not None else None

        try:
            outcome = self.scheduler.submit(job, cached=cached_now, force=request.rebuild)
        except Overloaded:
            self.metrics.rejected.inc()
            raise
        if isinstance(outcome, Ticket) and outcome.coalesced:
            self.metrics.builds_coalesced.labels(job.project).inc()
        return job, outcome

    def _record_queued(self, job: Job) -> None:
        r = job.request
        self.store.record_queued(job.project, job.id, r.group, r.params, r.rebuild,
                                 now=job.queued_at)

    def _hit(self, info: BuildInfo) -> BuildInfo:
        self.metrics.cache_hits.labels(info.Project).inc()
        self.store.touch(info.Project, info.ID)
        return info

    def build(self, request: JobRequest) -> BuildInfo:
        """Submit and wait: the BuildInfo of the finished build, cached or coalesced."""
        job, outcome = self.submit(request)
        if isinstance(outcome, BuildInfo):
            return outcome
        result = outcome.flight.wait()
        if result is None:
            raise RuntimeError(f"the build of {job.project}/{job.id} ended without a result")
        if outcome.coalesced:
            result = BuildInfo.from_json(result.to_json())
            result.Coalesced = True
        return result

    def log_path(self, project: str, build_id: str) -> Path:
        return self.layout.ready(project, build_id) / LOG_FILE

    def with_log(self, info: BuildInfo) -> dict:
        """The wire form of a BuildInfo: with the whole log, as upstream answers."""
        body = info.to_json()
        try:
            body["ContainerStdouterr"] = self.log_path(info.Project, info.ID).read_text(
                errors="replace")
        except FileNotFoundError:
            pass
        return body

    def _queue_changed(self, queued: int, running: int) -> None:
        self.metrics.queued.set(queued)
        self.metrics.running.set(running)

