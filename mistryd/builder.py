"""Runs one job from start to finish: workspace, params, image, container, atomic finish.
The builder executes; it decides nothing about when (that is the scheduler's)."""

from __future__ import annotations

import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .docker_runner import DockerRunner, ImageBuildError
from .jobs import IMAGE_BUILD_FAILED, BuildInfo, JobRequest, rfc3339
from .layout import INFO_FILE, LOG_FILE, Layout, point, publish, write_json_atomically
from .logs import LiveLog
from .metrics import Metrics
from .storage import Storage
from .store import Status, Store

RESET_ON_CLONE = ("data/params", "data/artifacts")


@dataclass
class Job:
    request: JobRequest
    id: str
    fingerprint: str
    context: Path  # the project folder (docker build context)
    queued_at: float = field(default_factory=time.time)
    log: LiveLog = field(default_factory=LiveLog)
    timeout: float | None = None

    @property
    def project(self) -> str:
        return self.request.project

    @property
    def url(self) -> str:
        return f"job/{self.project}/{self.id}"


class Builder:
    def __init__(self, layout: Layout, store: Store, storage: Storage, runner: DockerRunner,
                 metrics: Metrics):
        self.layout = layout
        self.store = store
        self.storage = storage
        self.runner = runner
        self.metrics = metrics

    def run(self, job: Job) -> BuildInfo:
        started = time.time()
        project = job.project
        pending = self.layout.pending(project, job.id)
        info = BuildInfo(
            ID=job.id, Project=project, Params=dict(job.request.params), Group=job.request.group,
            Path=str(self.layout.ready(project, job.id) / "data" / "artifacts"), URL=job.url,
            StartedAt=rfc3339(datetime.fromtimestamp(started, timezone.utc)),
        )
        self.store.record_running(project, job.id, now=started)
        self.metrics.builds_started.labels(project).inc()
        timings = {"queued": round(started - job.queued_at, 3)}
        status = Status.FAILED
        reason = ""
        try:
            info.Incremental = self._prepare_workspace(job, pending)
            if info.Incremental:
                self.metrics.builds_incremental.labels(project).inc()
            job.log.open(pending / LOG_FILE)
            t = time.time()
            try:
                image = self.runner.ensure_image(project, job.context, job.fingerprint, job.log,
                                                 rebuild=job.request.rebuild)
            except ImageBuildError as e:
                info.ExitCode = IMAGE_BUILD_FAILED
                info.ErrBuild = f"could not build the image: {e}"
                reason = "image build failed"
            else:
                timings["image"] = round(time.time() - t, 3)
                t = time.time()
                result = self.runner.run(image, self.runner.container_name(job.id), project,
                                         pending / "data",
                                         job.log, timeout=job.timeout)
                timings["run"] = round(time.time() - t, 3)
                info.ExitCode = result.exit_code
                info.ContainerStderr = result.stderr
                if result.timed_out:
                    status, reason = Status.TIMED_OUT, f"timed out after {job.timeout:g}s"
                    info.ErrBuild = reason
                elif result.exit_code == 0:
                    status = Status.SUCCEEDED
                else:
                    reason = f"exit code {result.exit_code}"
        except Exception as e:  # noqa: BLE001 - any failure must still end as a record
            info.ErrBuild = info.ErrBuild or f"mistryd: {type(e).__name__}: {e}"
            reason = reason or info.ErrBuild
            job.log.line(info.ErrBuild)
            job.log.line(traceback.format_exc())
            status = Status.FAILED
        info.Duration = int((time.time() - started) * 1e9)
        info.Status = status.value
        info.Timings = timings
        self._finish(job, pending, info, status, reason)
        return info

    def _prepare_workspace(self, job: Job, pending: Path) -> bool:
        """An empty folder, or a clone of the group's last good build (params and artifacts reset,
        /data/cache kept). Returns whether the build is incremental."""
        pending.parent.mkdir(parents=True, exist_ok=True)
        if pending.exists():  # left by a crash: never build on a half-written folder
            self.storage.remove(pending)
        source = self.layout.last_good(job.project, job.request.group) \
            if job.request.group else None
        if source is not None:
            self.storage.clone(source, pending)
            for name in (*RESET_ON_CLONE, LOG_FILE, INFO_FILE):
                path = pending / name
                if path.is_dir():
                    _empty_dir(path)
                elif path.exists():
                    path.unlink()
        else:
            self.storage.create(pending)
        for sub in ("params", "artifacts", "cache"):
            (pending / "data" / sub).mkdir(parents=True, exist_ok=True)
        for key, value in job.request.params.items():
            (pending / "data" / "params" / key).write_text(value)
        return source is not None

    def _finish(self, job: Job, pending: Path, info: BuildInfo, status: Status,
                reason: str) -> None:
        """build_info.json, then the atomic move to ready/, then (on success) the pointer."""
        project = job.project
        try:
            if not pending.exists():
                self.storage.create(pending)
            write_json_atomically(pending / INFO_FILE, info.to_json())
            ready = self.layout.ready(project, job.id)
            replaced = publish(pending, ready)
            if replaced is not None:
                self.storage.remove(replaced)
            else:
                self.metrics.builds_hosted.inc()
            if status is Status.SUCCEEDED:
                point(self.layout.pointer(project, job.request.group), ready)
        except Exception as e:  # noqa: BLE001
            status, reason = Status.FAILED, f"mistryd could not store the build: {e}"
            info.ErrBuild = info.ErrBuild or reason
            info.Status = status.value
        self.store.record_finished(project, job.id, status, info.to_json(), reason)
        self.metrics.builds_finished.labels(project).inc()
        seconds = info.Duration / 1e9
        hist = self.metrics.succeeded_seconds if status is Status.SUCCEEDED \
            else self.metrics.failed_seconds
        hist.labels(project).observe(seconds)
        job.log.finish({"status": status.value, "exit_code": info.ExitCode})


def _empty_dir(path: Path) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
