"""Runs one job from start to finish: workspace, params, image, container, atomic finish.
The builder executes; it decides nothing about when (that is the scheduler's)."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from .config import ProjectSettings
from .docker_runner import (
    ContainerRun,
    DockerRunner,
    ImageBuildCancelled,
    ImageBuildError,
    ImageBuildTimedOut,
    RunResult,
)
from .errors import MistryError
from .explain import keep_inputs
from .jobs import BuildInfo, JobRequest, public_params, rfc3339
from .layout import INFO_FILE, LOG_FILE, Layout, point, publish, write_json_atomically
from .logs import LiveLog
from .metrics import Metrics
from .outputs import hand_over, replace_bad_data_dirs, sanitize
from .queue.base import Outcome
from .storage import Storage
from .store import Status, Store, cancel_status

log = logging.getLogger("mistryd")
REFUSED = "refused: "  # the reason of a build whose leftovers could not be kept


class JobHooks(Protocol):
    """What a kind of job adds to a build (push builds: mistryd/push/run.py). `prepare` runs
    once the workspace and the log are ready, before the image: it may raise a MistryError (the
    build fails with its message) or Stopped, and says what the container runs. `ended` runs
    after the record is written, whatever happened, and must not raise."""

    def prepare(self, job: Job, data: Path) -> ContainerRun: ...

    def closing(self, job: Job, info: BuildInfo) -> None: ...

    def ended(self, job: Job, info: BuildInfo) -> None: ...


class Stopped(Exception):
    """A hook's step was cancelled or timed out: the build ends with this status and reason."""

    def __init__(self, status: Status, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Job:
    request: JobRequest
    id: str
    fingerprint: str
    context: Path  # the project folder (docker build context)
    settings: ProjectSettings
    queued_at: float = field(default_factory=time.time)
    log: LiveLog = field(default_factory=LiveLog)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = ""
    # set by the worker that took the job from the queue: when it started, how the outcome is
    # recorded (the queue's finish under the worker's lease), and whether the lease was lost
    started_at: float | None = None
    record: Callable[[Outcome], None] | None = None
    note_log: Callable[[str], None] | None = None  # tells readers elsewhere which file the log is
    recorded: bool = False
    lease_lost: threading.Event = field(default_factory=threading.Event)
    hooks: JobHooks | None = None  # what a kind of job adds (a push build's git work)
    # the groups whose last good build /data/cache may start from, in order (None: the request's
    # group); a build publishes into its request's group only (docs/push.md, trusted branches)
    seed_groups: tuple[str, ...] | None = None
    # with builders on other machines: the labels a builder needs to take it, and whether only
    # the central server's own builders may (push builds: its git, its ssh-agent)
    labels: tuple[str, ...] = ()
    central_only: bool = False

    @property
    def project(self) -> str:
        return self.request.project

    @property
    def url(self) -> str:
        return f"job/{self.project}/{self.id}"

    def request_cancel(self, reason: str) -> None:
        if not self.cancel.is_set():
            self.cancel_reason = reason
            self.cancel.set()


class Builder:
    def __init__(self, layout: Layout, store: Store, storage: Storage, runner: DockerRunner,
                 metrics: Metrics, uid: int = -1, gid: int = -1, name: str = ""):
        self.uid, self.gid = uid, gid  # who builds run as (-1: the server's own)
        self.name = name  # the builder's name in its builds' records (BuildInfo.Builder)
        self.layout = layout
        self.store = store
        self.storage = storage
        self.runner = runner
        self.metrics = metrics

    def new_info(self, job: Job, started: float) -> BuildInfo:
        return self._info(job.project, job.id, job.request.key_params(), job.request.group,
                          started)

    def _info(self, project: str, build_id: str, params: dict[str, str], group: str,
              started: float) -> BuildInfo:
        return BuildInfo(
            ID=build_id, Project=project, Params=public_params(params), Group=group,
            URL=f"job/{project}/{build_id}",
            Path=str(self.layout.ready(project, build_id) / "data" / "artifacts"),
            StartedAt=rfc3339(datetime.fromtimestamp(started, UTC)), Builder=self.name,
        )

    def run(self, job: Job) -> BuildInfo:
        """Never raises: whatever goes wrong (a full disk included) ends as a failed record that
        every waiter gets, and the worker lives on."""
        try:
            info = self._run(job)
        except Exception as e:  # noqa: BLE001
            info = self._crashed(job, e)
        if job.hooks is not None:
            try:
                job.hooks.ended(job, info)
            except Exception:  # noqa: BLE001 - the outcome is recorded; a hook cannot change it
                log.exception("mistryd: the end of build %s/%s was not fully handled",
                              job.project, job.id)
        return info

    def _run(self, job: Job) -> BuildInfo:
        started = time.time() if job.started_at is None else job.started_at  # the queue's take
        project = job.project
        pending = self.layout.pending(project, job.id)
        info = self.new_info(job, started)
        if job.record is None:  # not taken from a queue: the index learns of the start here
            self.store.record_running(project, job.id, now=started)
        self.metrics.builds_started.labels(project).inc()
        log.info("mistryd: build %s/%s started (group %s)", project, job.id, job.request.group or "-")
        timings = {"queued": round(started - job.queued_at, 3)}
        status, reason = Status.FAILED, ""
        try:
            seed = self._prepare_workspace(job, pending)
            info.Incremental = seed is not None
            if seed is not None:
                info.CacheFrom = {"Project": project, "Group": seed[0], "ID": seed[1].name}
                self.metrics.builds_incremental.labels(project).inc()
            job.log.open(pending / LOG_FILE)
            if job.note_log is not None and job.log.identity is not None:
                job.note_log("{}:{}".format(*job.log.identity))
            extra = job.hooks.prepare(job, pending / "data") if job.hooks is not None else None
            t = time.time()
            try:
                image = self.runner.ensure_image(project, job.context, job.fingerprint, job.log,
                                                 rebuild=job.request.rebuild,
                                                 settings=job.settings, cancel=job.cancel)
            except ImageBuildCancelled:
                status, reason = cancel_status(job.cancel_reason), job.cancel_reason or "cancelled"
            except ImageBuildTimedOut as e:
                status, reason = Status.TIMED_OUT, str(e)
            except ImageBuildError as e:
                info.ErrBuild = f"could not build the image: {e}"
                reason = "image build failed"
                log.info("mistryd: build %s/%s: %s", project, job.id, info.ErrBuild)
            else:
                timings["image"] = round(time.time() - t, 3)
                if job.cancel.is_set():
                    status, reason = cancel_status(job.cancel_reason), job.cancel_reason
                else:
                    t = time.time()
                    result = RunResult(0, "") if extra is not None and extra.dry_run else \
                        self.runner.run(image, self.runner.container_name(job.id), project,
                                        pending / "data", job.log, job.settings, job.cancel,
                                        extra)
                    timings["run"] = round(time.time() - t, 3)
                    info.ExitCode = result.exit_code
                    info.ContainerStderr = result.stderr
                    status, reason = run_outcome(job, result)
                    status, reason = self.defuse(job, pending / "data", status, reason)
                    if reason.startswith(REFUSED):
                        info.ErrBuild = reason
        except Stopped as e:  # a hook's step (a push build's git work)
            status, reason = e.status, e.reason
        except (MistryError, ImageBuildError) as e:
            # expected (Docker down or refusing, the project changed, a lost image that did not
            # build again): the line names the thing and the fix, a traceback would add nothing
            message = e.message if isinstance(e, MistryError) else f"could not build the image: {e}"
            info.ErrBuild = reason = message
            job.log.line(f"mistryd: {message}")
            log.warning("mistryd: build %s/%s failed: %s", project, job.id, message)
            status = Status.FAILED
        except Exception as e:  # noqa: BLE001 - any failure must still end as a record
            info.ErrBuild = info.ErrBuild or f"mistryd: {type(e).__name__}: {e}"
            reason = reason or info.ErrBuild
            job.log.line(f"{info.ErrBuild} (the details are in the server's log)")
            log.exception("mistryd: build %s/%s failed: %s", project, job.id, info.ErrBuild)
            status = Status.FAILED
        if status in (Status.CANCELLED, Status.SUPERSEDED, Status.TIMED_OUT):
            info.ErrBuild = reason
            job.log.line(f"mistryd: {reason}")
        info.Duration = int((time.time() - started) * 1e9)
        info.Status = status.value
        info.Timings = timings
        if job.hooks is not None:
            job.hooks.closing(job, info)
        self._finish(job, pending, info, status, reason)
        return info

    def defuse(self, job: Job, data: Path, status: Status, reason: str) -> tuple[Status, str]:
        """The container has exited: what it left is hostile. Remove the opaque params (they were
        for the container only), defuse the rest, and refuse a build whose folders were swapped
        for links or files."""
        for name in job.request.opaque_params():
            try:
                os.unlink(os.path.join(data, "params", name))
            except (FileNotFoundError, NotADirectoryError):
                pass
        findings = sanitize(data)
        if findings.summary():
            job.log.line(f"mistryd: {findings.summary()}")
        if findings.refused:
            problem = "; ".join(findings.refused)
            job.log.line(f"mistryd: the build is refused: {problem}")
            self.metrics.builds_refused.labels(job.project).inc()
            return Status.FAILED, f"{REFUSED}{problem}"
        return status, reason

    def _crashed(self, job: Job, error: Exception) -> BuildInfo:
        """The finish itself failed (e.g. no space left for the record or the index): nothing
        was published; remove the half-made folder and answer with a failure."""
        log.exception("mistryd: build %s/%s could not be finished", job.project, job.id)
        info = self.new_info(job, time.time())
        info.Status = Status.FAILED.value
        info.ErrBuild = f"mistryd could not finish the build: {type(error).__name__}: {error}"
        for attempt in (
            lambda: self.storage.remove(self.layout.pending(job.project, job.id)),
            lambda: self._record(job, Status.FAILED, info, info.ErrBuild),
        ):
            try:
                attempt()
            except Exception:  # noqa: BLE001 - best effort; the answer matters more
                log.exception("mistryd: clean-up after a failed finish failed too")
        job.log.finish({"status": info.Status, "exit_code": info.ExitCode})
        return info

    def cancelled_info(self, job: Job) -> BuildInfo:
        """The record of a queued job of this process cancelled before any worker took it (the
        queue writes it)."""
        return self.cancelled_record(job.project, job.id, job.request.params, job.request.group,
                                     job.cancel_reason)

    def cancelled_record(self, project: str, build_id: str, params: dict[str, str], group: str,
                         reason: str) -> BuildInfo:
        """The record of a job cancelled before it ran: no build folder, no log, no builder."""
        info = self._info(project, build_id, params, group, time.time())
        info.Builder = ""
        info.Status = cancel_status(reason).value
        info.ErrBuild = reason
        return info

    def _record(self, job: Job, status: Status, info: BuildInfo, reason: str) -> None:
        """The outcome into the queue (under the worker's lease), or straight into the index
        for a job that was not taken from a queue."""
        if job.record is not None:
            job.record(Outcome(status, info.to_json(), reason))
        else:
            self.store.record_finished(job.project, job.id, status, info.to_json(), reason)

    def _prepare_workspace(self, job: Job, pending: Path) -> tuple[str, Path] | None:
        """An empty folder, or a clone of the group's last good build of which only /data/cache
        is kept. Returns the group and build folder the cache came from (None: an empty cache)."""
        seed = self.cache_seed(job)
        self.make_workspace(job, pending, None if seed is None else seed[1])
        return seed

    def cache_seed(self, job: Job) -> tuple[str, Path] | None:
        """The first of the job's seed groups that has a last good build, and that build."""
        for group in job.seed_groups or (job.request.group,):
            if group and (source := self.layout.last_good(job.project, group)) is not None:
                return group, source
        return None

    def make_workspace(self, job: Job, pending: Path, source: Path | None) -> None:
        """`pending` made afresh: empty, or a clone of the build folder `source` of which only
        /data/cache is kept; then the params and the build uid (also a verification's folder,
        mistryd/verify.py)."""
        pending.parent.mkdir(parents=True, exist_ok=True)
        if pending.exists():  # left by a crash: never build on a half-written folder
            self.storage.remove(pending)
        if source is not None:
            self.storage.clone(source, pending)
            _keep_only(pending, {"data"})
            if not (pending / "data").is_dir() or (pending / "data").is_symlink():
                raise RuntimeError(f"the group's last build {source.name} has no data folder")
            _keep_only(pending / "data", {"cache"})
        else:
            self.storage.create(pending)
        os.chmod(pending, 0o750)  # other users of the host never reach into a build
        (pending / "data").mkdir(exist_ok=True)
        replace_bad_data_dirs(pending / "data")  # a cache carried from before sanitizing existed
        for key, value in job.request.params.items():
            (pending / "data" / "params" / key).write_text(value)
        hand_over(pending / "data", self.uid, self.gid)

    def _finish(self, job: Job, pending: Path, info: BuildInfo, status: Status,
                reason: str) -> None:
        """build_info.json, then the atomic move to ready/, then (on success) the pointer.

        Which record wins: until the move, nothing is published, and a failure makes the build
        failed (its half-made folder is removed). From the move on, the folder in ready/ with
        its build_info.json is the build: what fails after it (removing the build it replaced,
        moving the group pointer, writing the index row) is logged and mended later, and never
        changes the outcome the waiters get (the index is reconciled from the folder at the next
        start)."""
        project = job.project
        ready = self.layout.ready(project, job.id)
        if job.lease_lost.is_set():
            # another builder took the job again (this one stopped heartbeating): its result
            # is the one that counts; this one publishes nothing and records nothing
            log.warning("mistryd: build %s/%s lost its lease; its result is not published",
                        project, job.id)
            job.log.finish({"status": status.value, "exit_code": info.ExitCode})
            return
        try:
            if not pending.exists():
                self.storage.create(pending)
            keep_inputs(pending, job.context, job.fingerprint, job.request.opaque_params())
            write_json_atomically(pending / INFO_FILE, info.to_json())
            replaced = publish(pending, ready)
        except Exception as e:  # noqa: BLE001
            status, reason = Status.FAILED, f"mistryd could not store the build: {e}"
            info.ErrBuild = info.ErrBuild or reason
            info.Status = status.value
            self._discard(pending)
        else:
            self.after_publish(job.project, job.request.group, ready, replaced, status)
        try:
            self._record(job, status, info, reason)
        except Exception:  # noqa: BLE001
            log.exception("mistryd: the index row of %s/%s was not written; it is mended from "
                          "the build folder at the next start", project, job.id)
        self.metrics.builds_finished.labels(project).inc()
        self.metrics.builds_by_builder.labels(self.name).inc()
        seconds = info.Duration / 1e9
        hist = self.metrics.succeeded_seconds if status is Status.SUCCEEDED \
            else self.metrics.failed_seconds
        hist.labels(project).observe(seconds)
        log.info("mistryd: build %s/%s %s after %.1fs%s", project, job.id, status.value, seconds,
                 f" ({reason})" if reason else "")
        job.log.finish({"status": status.value, "exit_code": info.ExitCode})

    def after_publish(self, project: str, group: str, ready: Path, replaced: Path | None,
                      status: Status) -> None:
        """A build folder has moved into ready/ (built here, or landed from a builder
        elsewhere: mistryd/landing.py): the one it replaced goes, the group's pointer follows a
        success."""
        if replaced is None:
            self.metrics.builds_hosted.inc()
        else:
            self._discard(replaced)  # left in pending/: the next start removes it
        if status is Status.SUCCEEDED:
            try:
                point(self.layout.pointer(project, group), ready)
            except OSError:
                log.exception("mistryd: the pointer of %s group %r was not moved to %s; the "
                              "group's next build starts from its previous cache", project,
                              group, ready.name)

    def _discard(self, folder: Path) -> None:
        try:
            if os.path.lexists(folder):
                self.storage.remove(folder)
        except Exception:  # noqa: BLE001 - best effort: start-up removes what is left in pending/
            log.exception("mistryd: could not remove %s", folder)


def run_outcome(job: Job, result: RunResult) -> tuple[Status, str]:
    """What a container's run means for the build (also a verification's, mistryd/verify.py)."""
    if result.cancelled:
        return cancel_status(job.cancel_reason), job.cancel_reason or "cancelled"
    if result.timed_out:
        return Status.TIMED_OUT, f"timed out after {job.settings.build_timeout}s"
    if result.exit_code == 0:
        return Status.SUCCEEDED, ""
    return Status.FAILED, f"exit code {result.exit_code}"


def _keep_only(folder: Path, keep: set[str]) -> None:
    """Remove everything in `folder` but the entries named in `keep`."""
    for entry in os.scandir(folder):
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
