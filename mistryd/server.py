"""The server object: wires config, store, storage, Docker, scheduler and metrics together, and
answers the one question every entry point asks: `request(JobRequest)`."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from .batches import BatchDriver
from .builder import Builder, Job
from .builders import local_builders
from .config import Config
from .coordinator import Coordinator
from .docker_runner import DockerRunner
from .errors import (
    ConfigError,
    Conflict,
    MistryError,
    NotFound,
    Overloaded,
    ProjectChanged,
    ShuttingDown,
    UnknownProject,
)
from .gc import Collector, check_free_space
from .hits import Hit, HitCache, wire_form
from .jobs import BuildInfo, JobRequest, job_key, record_status
from .layout import LOG_FILE, BuildPathInUse, Layout, lock_build_path
from .metrics import Metrics, forget_other_processes
from .projects import Projects, folder_fingerprint, known_fingerprint
from .push import PushBuilds
from .queue import IndexedQueue, JobKey, open_queue
from .remote.registry import Announcer, BuilderState, forget_earlier, open_registry
from .scheduler import Elsewhere, Flight, Scheduler, Ticket, request_of
from .storage import make_storage
from .store import SUPERSEDED_BY, BuildRow, Status, Store
from .verify import Verifier

log = logging.getLogger("mistryd")


class Server:
    """With `builder_processes` = 0 one process does everything. Else the serving process (HTTP,
    hits, admission, waiters) builds nothing: builder processes (mistryd/builders.py) do, each a
    Server made with its `builder_name`."""

    def __init__(self, config: Config, runner: DockerRunner | None = None,
                 builder_name: str | None = None):
        self.config = config
        self.builds_here = builder_name is not None or config.builder_processes == 0
        self.layout = Layout(config.build_path)
        self.layout.make_private()
        self.projects = Projects(config.projects_path)
        self.storage = make_storage(config.filesystem, config.build_path)
        self.store = Store(self.layout)
        self.hits = HitCache(self.layout)
        self.metrics = Metrics()
        self.runner = runner or DockerRunner(config)
        self.builder = Builder(self.layout, self.store, self.storage, self.runner, self.metrics,
                               uid=config.container_uid, gid=config.container_gid,
                               name=config.name)
        # who builds (this server's builder processes, builders elsewhere): remote/registry.py
        self.registry = open_registry(config.queue, self.layout.state_dir())
        self.announcer: Announcer | None = None
        self.queue = open_queue(config.queue, self.store)
        self.push = PushBuilds(config, self.layout,  # push-triggered builds (mistryd/push/)
                               lambda kind, outcome: self.metrics.notifications.labels(
                                   kind, outcome).inc())
        self.scheduler = Scheduler(self.builder.run,
                                   config.job_concurrency if self.builds_here else 0,
                                   config.backlog, on_change=self._queue_changed,
                                   on_cancel_queued=self.builder.cancelled_info,
                                   blocked_on=self._image_being_built, queue=self.queue,
                                   make_job=self._job_of, name=builder_name or "mistryd",
                                   spare=None if self.builds_here else self._spare_builders,
                                   lease_seconds=config.lease_seconds)
        self._lock_fd: int | None = None  # build_path's lock, held from start() to stop()
        self.verifier = Verifier(self)  # rebuild and diff of cached builds (mistryd/verify.py)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Take build_path for this process, clean what a previous process left, then take
        work. ConfigError when another mistryd holds build_path."""
        self.take_build_path()
        self.recover()
        self.scheduler.start()
        self._announce()
        self.start_collector()
        log.info("mistryd: storage=%s build_path=%s projects=%s", self.storage.name,
                 self.config.build_path, ", ".join(self.projects.names()) or "(none)")

    def take_build_path(self) -> None:
        """build_path's lock for this process (ConfigError when another mistryd holds it); the
        figures of earlier processes go, as a new server's start at zero."""
        try:
            self._lock_fd = lock_build_path(self.layout)
        except BuildPathInUse as e:
            raise ConfigError("build_path", str(e)) from None
        forget_other_processes()
        self.metrics.builds_hosted.set(self.store.count(status=Status.SUCCEEDED)
                                       + self.store.count(status=Status.FAILED))

    def start_collector(self) -> None:
        """Garbage collection every `gc_interval` seconds, in this process."""
        self.collector = Collector.for_server(self)
        self.collector.start()
        self.coordinator = Coordinator.for_server(self)  # with a shared queue: its watch
        if self.coordinator is not None:
            self.coordinator.start()
        self.batch_driver = BatchDriver.for_server(self)  # dependency-ordered batches

    def start_building(self, collect: bool = False) -> None:
        """A builder process: take work from the queue (the supervisor holds build_path's lock
        and has recovered it); one of them (`collect`) also collects garbage."""
        self.scheduler.start()
        self._announce()
        if collect:
            self.start_collector()
        log.info("mistryd: builder %s takes jobs (%d at a time)", self.scheduler.name,
                 self.config.job_concurrency)

    def _announce(self) -> None:
        """This process's builders on the list (GET /api/queue/stats), every 2 s."""
        if self.scheduler.concurrency == 0:
            return

        def state() -> BuilderState:
            running = sum(1 for f in self.scheduler.flights() if f.running)
            return BuilderState(self.scheduler.name, (), running, self.scheduler.concurrency,
                                time.time())

        self.announcer = Announcer(self.registry, state)
        self.announcer.start()

    def builder_gone(self, prefix: str) -> None:
        """A builder process died: remove its containers and queue its jobs again at once. The
        containers go first: a builder that waits for work takes a job the moment it is queued
        again, and its container has the same name."""
        held = [j.key for j in self.queue.jobs() if (j.builder or "").startswith(prefix)]
        self._remove_containers(held)
        keys = self.queue.drop_builder(prefix)
        self._remove_containers([key for key in keys if key not in held])
        self.registry.forget(prefix.rstrip("-"))  # a dead process is off the list, not lost
        self.metrics.jobs_redelivered.inc(len(keys))
        if keys:
            log.warning("mistryd: %d job(s) of builder %s queued again: %s", len(keys),
                        prefix.rstrip("-"), ", ".join(map(str, keys)))

    def _remove_containers(self, keys: list[JobKey]) -> None:
        for key in keys:
            try:
                self.runner.remove_container(self.runner.container_name(key.id))
            except MistryError as e:
                log.warning("mistryd: the container of %s was not removed: %s", key, e.message)

    def _spare_builders(self) -> int:
        """Jobs the builder processes are about to take: their workers not busy."""
        total = self.config.builder_processes * self.config.job_concurrency
        return max(0, total - self.queue.stats().running)

    def stop(self, grace: float | None = None) -> None:
        """Take no new work; running builds get `grace` seconds (config `shutdown_grace`) and
        are then cancelled; queued jobs stay queued in the store for the next start."""
        if (collector := getattr(self, "collector", None)) is not None:
            collector.stop()
        if (coordinator := getattr(self, "coordinator", None)) is not None:
            coordinator.stop()
        if (batch_driver := getattr(self, "batch_driver", None)) is not None:
            batch_driver.stop()
        self.verifier.stop()
        if self.announcer is not None:
            self.announcer.stop()
        self.scheduler.stop(self.config.shutdown_grace if grace is None else grace)
        self.store.flush_usage()
        self.release_build_path()

    def release_build_path(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> None:
        """After a crash or a stop: remove half-built folders and orphaned containers; the jobs
        that were running go back to the queue (no builder of the previous process lives on),
        and every queued job is checked against its project (or recorded why it cannot run)."""
        removed = 0
        for pending_dir in self.layout.root.glob("*/pending/*"):
            self.storage.remove(pending_dir)
            removed += 1
        orphans = self.runner.remove_orphans()
        removed += self.verifier.remove_leftovers()
        unfinished = self.store.unfinished()
        for row in unfinished:
            done = self.layout.read_info(row.project, row.id)
            if done is not None and _same_run(done, row):  # it finished; only the index lagged
                self.store.record_finished(row.project, row.id, Status(record_status(done)), done)
        # this machine's earlier builder processes are gone: off the builders' list (those
        # started now announce themselves again)
        forget_earlier(self.registry, local_builders(self.config))
        self.registry.forget(self.scheduler.name)
        if isinstance(self.queue, IndexedQueue):
            # builders elsewhere live on: only this machine's builders' leases are gone
            self.queue.drop_builder(local_builders(self.config))
            self.queue.reconcile()
        else:
            self.queue.reap(every_lease=True)
        outcomes = [self._resume(row) for row in self.store.unfinished()
                    if row.status is Status.QUEUED]
        if removed or orphans or unfinished:
            log.warning("mistryd: removed %d pending folder(s) and %d orphaned container(s); "
                        "of %d unfinished job(s): %d queued again", removed, len(orphans),
                        len(unfinished), outcomes.count(True))

    def _resume(self, row: BuildRow) -> bool:
        """A queued job after a restart stays queued when its project still gives it the same
        key; else it is recorded as ended (and queued under its new key). False when ended."""
        try:
            job = self.make_job(JobRequest(row.project, {**row.params, **row.opaque}, row.group,
                                           row.rebuild))
        except MistryError as e:
            self.store.transition(row.project, row.id, Status.FAILED,
                                  f"cannot run again after a restart: {e.message}")
            self.push.never_ran(JobRequest(row.project, {**row.params, **row.opaque}, row.group),
                                row.id, Status.FAILED)
            return False
        if job.id == row.id:
            return True
        self.store.transition(row.project, row.id, Status.ABANDONED,
                              f"the project changed while mistryd was down; "
                              f"queued again as {job.id}")
        self.queue.submit(JobKey(job.project, job.id), request_of(job), now=job.queued_at)
        return True

    def _job_of(self, key: JobKey, r: dict) -> Job:
        """The Job of a queued request (submitted by another process, or queued before a
        restart). ProjectChanged when the project no longer gives it the key it was queued
        under."""
        job = self.make_job(JobRequest(r["project"], r["params"], r["group"], r["rebuild"]))
        if job.id != key.id:
            raise ProjectChanged(job.project, "while the build was queued")
        return job


    # --- requests -----------------------------------------------------------------------------

    def make_job(self, request: JobRequest, key: tuple[str, str] | None = None) -> Job:
        request = self.push.as_configured(request)  # a push build: its rule as configured now
        build_id, fingerprint = key or self.key_of(request)
        push_folder = self.push.project_folder(request)
        job = Job(request=request, id=build_id, fingerprint=fingerprint,
                  context=push_folder or self.projects.root / request.project,
                  settings=self.config.for_project(request.project),
                  hooks=self.push.hooks(request), seed_groups=self.push.seed_groups(request),
                  labels=self.config.labels(request.project), central_only=push_folder is not None)
        if not self.builds_here or self.config.queue is not None:
            # its log is written by a builder process, or arrives from a builder elsewhere
            job.log.follow_file(lambda: self._log_file(JobKey(request.project, build_id)))
        return job

    def _log_file(self, key: JobKey) -> tuple[Path, tuple[int, int]] | None:
        noted = self.queue.log_file(key)
        if noted is None:
            return None
        dev, ino = noted.split(":")
        return self.layout.pending(key.project, key.id) / LOG_FILE, (int(dev), int(ino))

    def key_of(self, request: JobRequest) -> tuple[str, str]:
        """(job id, project fingerprint); UnknownProject when there is no such project."""
        fingerprint = folder_fingerprint(self._folder_of(request))
        return job_key(request, fingerprint), fingerprint

    def _folder_of(self, request: JobRequest) -> Path:
        return self.push.project_folder(request) or self.projects.path(request.project)

    def quick_hit(self, request: JobRequest) -> Hit | None:
        """The answer to `request` when it is a cache hit that can be told and counted with a few
        `stat`s: no file read, no walk of a large project, no write to disk (waitress's I/O
        thread answers it itself: web/lane.py). None otherwise, and nothing counted: `submit`
        tells."""
        if request.rebuild or self.store.usage_due():
            return None
        try:
            fingerprint = known_fingerprint(self._folder_of(request))
        except (UnknownProject, OSError):
            return None
        if fingerprint is None:
            return None
        hit = self.hits.kept(request.project, job_key(request, fingerprint))
        return self._hit(hit, flush=False) if hit is not None else None

    def submit(self, request: JobRequest) -> tuple[str, Ticket | Hit]:
        """(job id, outcome): a Hit at once, or a Ticket for a build in flight (joined or new).
        A hit builds no Job and touches no lock: key, one stat, bytes made earlier."""
        key = self.key_of(request)
        build_id = key[0]
        if not request.rebuild:
            hit = self.hits.get(request.project, build_id)
            if hit is not None:
                return build_id, self._hit(hit)
        job = self.make_job(request, key)

        def cached_now() -> Hit | None:
            hit = self.hits.get(job.project, job.id)
            return self._hit(hit) if hit is not None else None

        if not self.in_flight(job.project, job.id):  # joining needs no disk
            check_free_space(self.config.build_path, self.config.min_free_bytes)
        try:
            outcome = self.scheduler.submit(job, cached=cached_now, force=request.rebuild)
        except Overloaded:
            self.metrics.rejected.inc()
            raise
        if isinstance(outcome, Ticket) and outcome.coalesced:
            self.metrics.builds_coalesced.labels(job.project).inc()
        elif isinstance(outcome, Ticket) and self.config.duplicates(job.project) == "supersede":
            self._supersede(job)
        return build_id, outcome

    def _supersede(self, job: Job) -> None:
        """`duplicates: supersede` (chaotic-manager's way): a new build of a project and group
        cancels the older ones of the same project and group in flight, queued or running,
        wherever they run; they end `superseded` and their waiters are told."""
        reason = f"{SUPERSEDED_BY}{job.id}"
        for other in self.queue.jobs():
            if other.key.project == job.project and other.key.id != job.id \
                    and other.request.get("group", "") == job.request.group \
                    and other.queued_at <= job.queued_at:
                log.info("mistryd: build %s/%s is superseded by %s", job.project, other.key.id,
                         job.id)
                self._ask_cancel(job.project, other.key.id, reason)

    def in_flight(self, project: str, build_id: str) -> bool:
        """Whether the build is queued or running, in any process."""
        return self.queue.peek(JobKey(project, build_id)).in_flight

    def _hit(self, hit: Hit, flush: bool = True) -> Hit:
        self.metrics.cache_hits.labels(hit.info.Project).inc()
        self.store.touch(hit.info.Project, hit.info.ID, flush=flush)
        return hit

    def build(self, request: JobRequest) -> BuildInfo:
        """Submit and wait: the BuildInfo of the finished build, cached or coalesced."""
        _, outcome = self.submit(request)
        if isinstance(outcome, Hit):
            return outcome.info
        return self.wait(outcome)

    def wait(self, ticket: Ticket) -> BuildInfo:
        result = ticket.flight.wait()
        if result is None:  # the server stopped before the job ran; it stays queued
            raise ShuttingDown()
        if ticket.coalesced:
            result = BuildInfo.from_json(result.to_json())
            result.Coalesced = True
        return result

    def cancel(self, project: str, build_id: str, reason: str = "cancelled through the API",
               wait: float = 60) -> BuildInfo:
        """Cancel a queued or running build; its waiters get the same outcome."""
        row = self.store.get(project, build_id)
        flight = self._ask_cancel(project, build_id, reason, row)
        if flight is None:
            if row is None:
                raise NotFound(f"no build {project}/{build_id}")
            raise Conflict(f"build {project}/{build_id} has already ended ({row.status.value}); "
                           "there is nothing to cancel")
        result = flight.wait(wait)
        if result is None:
            raise Conflict(f"build {project}/{build_id} is being cancelled; ask again later")
        if result.Status != Status.CANCELLED.value:
            raise Conflict(f"build {project}/{build_id} ended ({result.Status}) before the "
                           "cancel took effect")
        if row is not None and row.status is Status.QUEUED and not result.Duration:  # never ran
            self.push.never_ran(JobRequest(project, {**row.params, **row.opaque}, row.group),
                                build_id, Status.CANCELLED)
        return result

    def _ask_cancel(self, project: str, build_id: str, reason: str,
                    row: BuildRow | None = None) -> Flight | Elsewhere | None:
        """Ask for the cancel of a build in flight (None: it is not); its end comes later."""
        row = row or self.store.get(project, build_id)
        record = None
        if row is not None and self.scheduler.in_flight(project, build_id) is None:
            record = self.builder.cancelled_record(project, build_id, row.params, row.group,
                                                   reason).to_json()
        return self.scheduler.cancel(project, build_id, reason, record)

    def log_path(self, project: str, build_id: str) -> Path:
        return self.layout.ready(project, build_id) / LOG_FILE

    def with_log(self, info: BuildInfo) -> dict:
        """The wire form of a BuildInfo: with the whole log, as upstream answers."""
        return wire_form(self.layout, info)

    def _image_being_built(self, job: Job) -> threading.Event | None:
        """Set when another job's build of this job's image ends (None: nobody builds it)."""
        return self.runner.image_build_in_progress(job.project, job.fingerprint)

    def _queue_changed(self, queued: int, running: int) -> None:
        self.metrics.queued.set(queued)
        self.metrics.running.set(running)



def _same_run(info: dict, row: BuildRow) -> bool:
    """Whether a build_info.json on disk is the record of the run the index saw start."""
    if row.started_at is None or not info.get("StartedAt"):
        return False
    try:
        started = datetime.fromisoformat(info["StartedAt"].replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return abs(started - row.started_at) < 0.001
