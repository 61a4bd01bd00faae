"""Everything that talks to Docker: image builds, container runs, clean-up. The only module that
imports the Docker SDK. Every image and container it makes carries the LABEL below, so start-up and
`rebuild` touch only what is ours, never the host's other images or containers."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from .config import Config, ProjectSettings
from .logs import LiveLog

LABEL = "io.mistryd.managed"
PROJECT_LABEL = "io.mistryd.project"
BUILD_LABEL = "io.mistryd.build"
# Which server a container belongs to (a hash of its build_path): start-up removes the orphans of
# its own previous process only, never the running builds of another mistryd on the same engine.
INSTANCE_LABEL = "io.mistryd.instance"
MAX_STDERR = 1 << 20


class ImageBuildError(Exception):
    """The project's Dockerfile did not build; the message holds docker's error (the failing line)."""


@dataclass
class RunResult:
    exit_code: int
    stderr: str
    timed_out: bool = False
    cancelled: bool = False


def build_args(context: Path, uid: int) -> dict[str, str]:
    """Upstream passes the build arg `uid`; we pass it to Dockerfiles that declare `ARG uid`
    only, so every other build log is spared docker's "build-args [uid] were not consumed"."""
    try:
        dockerfile = (Path(context) / "Dockerfile").read_text(errors="replace")
    except OSError:
        return {}
    declared = re.search(r"^\s*ARG\s+uid\b", dockerfile, re.IGNORECASE | re.MULTILINE)
    return {"uid": str(uid)} if declared else {}


def image_tag(project: str, fingerprint: str) -> str:
    """A tag per project *content*, so jobs of different project versions never race on one tag."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", project.lower()).strip("-._") or "project"
    suffix = hashlib.sha256(project.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"mistry/{slug[:80]}-{suffix}:{fingerprint[:20]}"


@dataclass
class DockerRunner:
    config: Config
    client: docker.DockerClient = field(default=None)  # type: ignore[assignment]
    _built: dict[str, str] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.client is None:
            self.client = docker.from_env(timeout=600)
        self.instance = hashlib.sha256(str(self.config.build_path).encode()).hexdigest()[:16]

    # --- images -------------------------------------------------------------------------------

    def ensure_image(self, project: str, context: Path, fingerprint: str, log: LiveLog,
                     rebuild: bool = False) -> str:
        """Build the project's image unless this server already built it for this content."""
        tag = image_tag(project, fingerprint)
        with self._lock_for(tag):
            if not rebuild and tag in self._built:
                log.line(f"mistryd: using image {tag}")
                return self._built[tag]
            image_id = self.build_image(project, context, tag, log, nocache=rebuild,
                                        pull=rebuild and self.config.pull_base)
            self._built[tag] = image_id
            return image_id

    def build_image(self, project: str, context: Path, tag: str, log: LiveLog,
                    nocache: bool = False, pull: bool = False) -> str:
        log.line(f"mistryd: building image {tag}{' without cache' if nocache else ''}")
        image_id = None
        stream = self.client.api.build(
            path=str(context), tag=tag, rm=True, forcerm=True, nocache=nocache, pull=pull,
            decode=True, labels={LABEL: "1", PROJECT_LABEL: project},
            buildargs=build_args(context, self.config.container_uid),
        )
        for chunk in stream:
            if "stream" in chunk:
                log.write(chunk["stream"].encode("utf-8", "replace"))
            if "error" in chunk:
                message = chunk["error"].strip()
                log.line(message)
                raise ImageBuildError(message)
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
        if image_id is None:
            image_id = self.client.images.get(tag).id
        return image_id

    def forget_images(self) -> None:
        self._built.clear()

    def _lock_for(self, tag: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(tag, threading.Lock())

    # --- containers ---------------------------------------------------------------------------

    def container_name(self, build_id: str) -> str:
        """Upstream's `mistry-<id>`, plus this server's instance, so two servers that build the
        same project on one engine never remove each other's container."""
        return f"mistry-{build_id}-{self.instance[:8]}"

    def run(self, image: str, name: str, project: str, data_dir: Path, log: LiveLog,
            settings: ProjectSettings, cancel: threading.Event | None = None) -> RunResult:
        """Run one build container with `data_dir` at /data; stream its output into `log`.
        The container is killed when `settings.build_timeout` passes or `cancel` is set."""
        self._remove_container(name)  # a stale container with this name must not block the build
        container = self.client.containers.create(
            image, name=name, detach=True, **self._container_options(project, name, data_dir,
                                                                     settings))
        cancel = cancel or threading.Event()
        ended = threading.Event()
        outcome: dict[str, bool] = {}

        def watch() -> None:
            """Kill the container on cancel or timeout; whichever comes first is the reason."""
            timeout = settings.build_timeout or None
            if cancel.wait(timeout):
                outcome["cancelled"] = not ended.is_set()
            elif not ended.is_set():
                outcome["timed_out"] = True
            if outcome:
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass  # it ended on its own meanwhile

        try:
            container.start()
            watcher = threading.Thread(target=watch, daemon=True, name=f"watch-{name[:20]}")
            watcher.start()
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                log.write(chunk)
            status = container.wait()
            ended.set()
            cancel_was_set = cancel.is_set()
            if not cancel_was_set:
                cancel.set()  # ends the watcher
            watcher.join(5)
            stderr = container.logs(stdout=False, stderr=True)[-MAX_STDERR:]
            return RunResult(status.get("StatusCode", -1), stderr.decode("utf-8", "replace"),
                             timed_out=outcome.get("timed_out", False),
                             cancelled=cancel_was_set and outcome.get("cancelled", False))
        finally:
            self._remove_container(name)

    def _container_options(self, project: str, name: str, data_dir: Path,
                           settings: ProjectSettings) -> dict:
        """Never privileged, no new privileges, every capability dropped but `cap_add`, and the
        memory, CPU and process limits of the project."""
        volumes = {str(data_dir): {"bind": "/data", "mode": "rw"}}
        for src, target in self.config.mounts.items():
            bind, _, mode = target.partition(":")
            volumes[src] = {"bind": bind, "mode": mode or "rw"}
        options: dict = {
            "volumes": volumes,
            "labels": {LABEL: "1", PROJECT_LABEL: project, BUILD_LABEL: name,
                       INSTANCE_LABEL: self.instance},
            "user": str(self.config.container_uid),
            "network_mode": settings.network_mode,
            "environment": dict(self.config.container_env),
            "privileged": False,
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
            "cap_add": list(self.config.cap_add) or None,
        }
        if settings.memory:
            options["mem_limit"] = settings.memory
            options["memswap_limit"] = settings.memory
        if settings.cpus:
            options["nano_cpus"] = int(settings.cpus * 1e9)
        if settings.pids_limit:
            options["pids_limit"] = settings.pids_limit
        return options

    def _remove_container(self, name: str) -> None:
        try:
            self.client.api.remove_container(name, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # removal already in progress
                raise

    def remove_orphans(self) -> list[str]:
        """Containers of this server's previous process (left by a crash): remove them."""
        removed = []
        mine = {"label": [LABEL, f"{INSTANCE_LABEL}={self.instance}"]}
        for c in self.client.containers.list(all=True, filters=mine):
            try:
                c.remove(force=True, v=True)
            except docker.errors.NotFound:
                continue  # gone meanwhile
            removed.append(c.name)
        return removed

    def prune_images(self) -> list[str]:
        """Dangling images of ours only (old versions left untagged by rebuilds)."""
        pruned = self.client.images.prune(filters={"dangling": True, "label": LABEL})
        return [d.get("Deleted", "") for d in pruned.get("ImagesDeleted") or []]
