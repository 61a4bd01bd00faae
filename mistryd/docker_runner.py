"""Everything that talks to Docker: image builds, container runs, clean-up. The only module that
imports the Docker SDK. Every image and container it makes carries the LABEL below, so start-up and
`rebuild` touch only what is ours, never the host's other images or containers."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import docker.utils

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


class ImageBuildTimedOut(ImageBuildError):
    """The image build ran past the project's `build_timeout` and was stopped."""


class ImageBuildCancelled(ImageBuildError):
    """The job was cancelled while its image was building (or while it waited for that build)."""


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


def instance_id(build_path: Path | str) -> str:
    """Which server this is: a hash of its build_path (labels, container names, image tags)."""
    return hashlib.sha256(str(build_path).encode()).hexdigest()[:16]


def image_tag(project: str, fingerprint: str, instance: str) -> str:
    """A tag per project *content*, so jobs of different project versions never race on one tag,
    and per server, so another mistryd on the same engine never retags or removes our images."""
    # letters, digits and single dashes only: docker refuses "a..b" or "a._b" in a repository
    slug = re.sub(r"[^a-z0-9]+", "-", project.lower())[:80].strip("-") or "project"
    suffix = hashlib.sha256(project.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"mistry/{slug}-{suffix}-{instance[:8]}:{fingerprint[:20]}"


def build_limits(settings: ProjectSettings) -> dict:
    """The project's limits as the build API takes them, so `RUN` steps get what the build
    container gets where the classic builder allows it: memory (no swap beyond it), a CPU weight
    (the build API has no CPU quota in the SDK) and the network mode. It cannot drop capabilities
    or limit processes."""
    limits: dict = {}
    if settings.memory:
        memory = docker.utils.parse_bytes(settings.memory)  # the API wants bytes, not "512m"
        limits["memory"] = memory
        limits["memswap"] = memory
    if settings.cpus:
        limits["cpushares"] = max(2, int(settings.cpus * 1024))
    options: dict = {"network_mode": settings.network_mode}
    if limits:
        options["container_limits"] = limits
    return options


def _deadline(timeout: int) -> float | None:
    return time.monotonic() + timeout if timeout else None


class _BuildStream:
    """One image build's HTTP response, shared with the thread that may end it early: the daemon
    cancels a build (killing and removing its `RUN` container) when its client hangs up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response = None
        self.stopped = False

    def attach(self, response) -> None:
        with self._lock:
            self._response = response
            if self.stopped:  # stopped while the context was still uploading
                _wake_reader(response)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            if self._response is not None:
                _wake_reader(self._response)

    def close(self) -> None:
        """Close the connection: this is what the daemon notices."""
        with self._lock:
            if self._response is not None:
                self._response.close()


def _wake_reader(response) -> None:
    try:
        response.raw.shutdown()  # the reading thread's blocked recv() returns; it then closes
    except (ValueError, RuntimeError, OSError):
        pass  # already closed or released: nothing is reading


@dataclass
class _ImageBuild:
    """What one build's stream told us, filled by the thread that reads it."""

    log: LiveLog
    stream: _BuildStream = field(default_factory=_BuildStream)
    done: threading.Event = field(default_factory=threading.Event)
    image_id: str | None = None
    error: str | None = None
    container: str | None = None  # the running RUN step's container

    def take(self, chunk: dict) -> None:
        if "stream" in chunk:
            self.log.write(chunk["stream"].encode("utf-8", "replace"))
            if running := _RUNNING_IN.search(chunk["stream"]):
                self.container = running.group(1)
        if "error" in chunk:
            self.error = chunk["error"].strip()
        if "aux" in chunk and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]


_RUNNING_IN = re.compile(r"Running in ([0-9a-f]{12,64})")
_POLL = 0.1  # how soon a cancel or a deadline is noticed, image build or container (seconds)
_STOP_GRACE = 10  # how long a stopped build's reader may take to let go (seconds)


@dataclass
class DockerRunner:
    config: Config
    client: docker.DockerClient = field(default=None)  # type: ignore[assignment]
    _built: dict[str, str] = field(default_factory=dict)  # tag -> image id
    _sources: dict[str, tuple[str, Path, str]] = field(default_factory=dict)  # id -> its inputs
    _building: dict[str, threading.Event] = field(default_factory=dict)  # tag -> set when done
    _building_guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.client is None:
            self.client = docker.from_env(timeout=600)
        self.instance = instance_id(self.config.build_path)
        self._reading = threading.local()  # the build stream the current thread is opening
        self.client.api.hooks["response"].append(self._attach_build_response)

    # --- images -------------------------------------------------------------------------------

    def image_tag(self, project: str, fingerprint: str) -> str:
        return image_tag(project, fingerprint, self.instance)

    def ensure_image(self, project: str, context: Path, fingerprint: str, log: LiveLog,
                     rebuild: bool = False, settings: ProjectSettings | None = None,
                     cancel: threading.Event | None = None) -> str:
        """Build the project's image unless this server already built it for this content (and
        it still exists). Waits for another job's build of the same image; raises
        ImageBuildTimedOut after `settings.build_timeout` and ImageBuildCancelled on `cancel`."""
        settings = settings or self.config.for_project(project)
        cancel = cancel or threading.Event()
        deadline = _deadline(settings.build_timeout)
        tag = self.image_tag(project, fingerprint)
        finished = self._claim(tag, cancel, deadline, settings.build_timeout)
        try:
            if not rebuild and (image_id := self._memoized(tag, log)):
                return image_id
            image_id = self.build_image(project, context, tag, log, nocache=rebuild,
                                        pull=rebuild and self.config.pull_base,
                                        settings=settings, cancel=cancel, deadline=deadline)
            self._built[tag] = image_id
            self._sources[image_id] = (project, Path(context), fingerprint)
            return image_id
        finally:
            with self._building_guard:
                self._building.pop(tag, None)
            finished.set()

    def image_build_in_progress(self, project: str, fingerprint: str) -> threading.Event | None:
        """The event set when the running build of this project version ends; None when none
        runs. A job needing that image can wait for it without holding a worker."""
        with self._building_guard:
            return self._building.get(self.image_tag(project, fingerprint))

    def build_image(self, project: str, context: Path, tag: str, log: LiveLog,
                    nocache: bool = False, pull: bool = False,
                    settings: ProjectSettings | None = None, cancel: threading.Event | None = None,
                    deadline: float | None = None) -> str:
        """Build `tag` under the project's limits; stop it at `deadline` (default: build_timeout
        from now) or on `cancel`. The daemon cancels a build whose client hangs up, so the build
        is read in a thread of its own and stopped by closing its connection."""
        settings = settings or self.config.for_project(project)
        if deadline is None:
            deadline = _deadline(settings.build_timeout)
        log.line(f"mistryd: building image {tag}{' without cache' if nocache else ''}")
        build = _ImageBuild(log)
        options = dict(
            path=str(context), tag=tag, rm=True, forcerm=True, nocache=nocache, pull=pull,
            decode=True, labels={LABEL: "1", PROJECT_LABEL: project, INSTANCE_LABEL: self.instance},
            buildargs=build_args(context, self.config.container_uid), **build_limits(settings),
        )
        reader = threading.Thread(target=self._read_build, args=(build, options), daemon=True,
                                  name=f"image-{project[:20]}")
        reader.start()
        stop = self._await_build(build, cancel or threading.Event(), deadline,
                                 settings.build_timeout)
        if stop is not None:
            build.stream.stop()
            reader.join(_STOP_GRACE)
            if build.container:  # the daemon removes it on hang-up; make sure of it
                self._remove_container(build.container)
            log.line(f"mistryd: {stop}")
            raise stop
        if build.error is not None:
            log.line(build.error)
            raise ImageBuildError(build.error)
        return build.image_id or self.client.images.get(tag).id

    def _read_build(self, build: _ImageBuild, options: dict) -> None:
        self._reading.stream = build.stream
        try:
            for chunk in self.client.api.build(**options):
                build.take(chunk)
                if build.error is not None:
                    break
        except Exception as e:  # noqa: BLE001 - reported by the waiting thread
            if not build.stream.stopped:
                build.error = f"docker: {type(e).__name__}: {e}"
        finally:
            self._reading.stream = None
            build.stream.close()
            build.done.set()

    def _attach_build_response(self, response, *args, **kwargs):
        """A requests hook: hand the response of a build this thread opened to its stream."""
        stream = getattr(self._reading, "stream", None)
        if stream is not None and response.request.path_url.split("?")[0].endswith("/build"):
            stream.attach(response)
        return response

    @staticmethod
    def _await_build(build: _ImageBuild, cancel: threading.Event, deadline: float | None,
                     timeout: int) -> ImageBuildError | None:
        """None when the build ended by itself, else why it must be stopped."""
        while not build.done.wait(_POLL):
            if cancel.is_set():
                return ImageBuildCancelled("image build cancelled")
            if deadline is not None and time.monotonic() >= deadline:
                return ImageBuildTimedOut(f"image build timed out after {timeout}s")
        return None

    def _claim(self, tag: str, cancel: threading.Event, deadline: float | None,
               timeout: int) -> threading.Event:
        """Become the one job building `tag`, waiting while another job builds it, as long as
        this job is not cancelled and its deadline has not passed."""
        while True:
            with self._building_guard:
                running = self._building.get(tag)
                if running is None:
                    mine = self._building[tag] = threading.Event()
                    return mine
            if cancel.is_set():
                raise ImageBuildCancelled("cancelled while waiting for another job's image build")
            if deadline is not None and time.monotonic() >= deadline:
                raise ImageBuildTimedOut(f"image build timed out after {timeout}s "
                                         "(waiting for another job's build of the same image)")
            running.wait(_POLL)

    def _memoized(self, tag: str, log: LiveLog) -> str | None:
        """The image this server built for `tag`, if it still exists: another process may have
        removed it (one cheap API call)."""
        image_id = self._built.get(tag)
        if image_id is None:
            return None
        try:
            self.client.api.inspect_image(image_id)
        except docker.errors.NotFound:
            log.line(f"mistryd: image {tag} was removed outside mistryd; building it again")
            self._forget(image_id)
            return None
        log.line(f"mistryd: using image {tag}")
        return image_id

    def _forget(self, image_id: str) -> None:
        self._sources.pop(image_id, None)
        for tag in [t for t, i in self._built.items() if i == image_id]:
            del self._built[tag]

    def forget_images(self) -> None:
        self._built.clear()
        self._sources.clear()

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
        cancel = cancel or threading.Event()
        options = self._container_options(project, name, data_dir, settings)
        try:
            container = self.client.containers.create(image, name=name, detach=True, **options)
        except docker.errors.ImageNotFound:
            try:
                image = self._rebuild_lost(image, log, settings, cancel)
            except ImageBuildCancelled:
                return RunResult(-1, "", cancelled=True)
            except ImageBuildTimedOut:
                return RunResult(-1, "", timed_out=True)
            container = self.client.containers.create(image, name=name, detach=True, **options)
        ended = threading.Event()
        outcome: dict[str, bool] = {}

        def watch() -> None:
            """Kill the container on cancel or timeout; whichever comes first is the reason.
            It checks `cancel` without ever setting it: the job's cancel event says only that
            someone cancelled the job, never that the container ended."""
            deadline = _deadline(settings.build_timeout)
            while not ended.is_set():
                if cancel.wait(_POLL):
                    outcome["cancelled"] = not ended.is_set()
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    outcome["timed_out"] = not ended.is_set()
                    break
            if any(outcome.values()):
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass  # it ended on its own meanwhile

        try:
            # Attached before the start, the stream carries every byte the build prints. Following
            # the log file instead (`logs(follow=True)`) ends early when a container that prints a
            # lot exits on a busy engine (Docker 20.10 cut a 100,000-line log at line 5,335).
            output = container.attach(stdout=True, stderr=True, stream=True, logs=False)
            container.start()
            watcher = threading.Thread(target=watch, daemon=True, name=f"watch-{name[:20]}")
            watcher.start()
            for chunk in output:
                log.write(chunk)
            status = container.wait()
            ended.set()
            watcher.join(5)
            stderr = container.logs(stdout=False, stderr=True)[-MAX_STDERR:]
            return RunResult(status.get("StatusCode", -1), stderr.decode("utf-8", "replace"),
                             timed_out=outcome.get("timed_out", False),
                             cancelled=outcome.get("cancelled", False))
        finally:
            self._remove_container(name)

    def _rebuild_lost(self, image: str, log: LiveLog, settings: ProjectSettings,
                      cancel: threading.Event) -> str:
        """The image was removed behind our back (after ensure_image checked it): build it again
        from the inputs it was built from. Raises ImageBuildError like ensure_image."""
        source = self._sources.get(image)
        if source is None:  # not one of ours: nothing to rebuild it from
            raise ImageBuildError(f"image {image} does not exist (removed outside mistryd?); "
                                  "build the project again")
        self._forget(image)
        project, context, fingerprint = source
        log.line(f"mistryd: image {image[:19]} was removed outside mistryd; building it again")
        return self.ensure_image(project, context, fingerprint, log, settings=settings,
                                 cancel=cancel)

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
            "user": f"{self.config.container_uid}:{self.config.container_gid}",
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
        """Dangling images of this server only (old versions left untagged by its rebuilds):
        never another mistryd's on the same engine."""
        mine = {"dangling": True, "label": [LABEL, f"{INSTANCE_LABEL}={self.instance}"]}
        pruned = self.client.images.prune(filters=mine)
        return [d.get("Deleted", "") for d in pruned.get("ImagesDeleted") or []]


def remove_instance_images(build_path: Path | str) -> int:
    """Remove every image the mistryd serving `build_path` built (by its instance label), for
    test and benchmark servers that go away with their build_path. Returns how many."""
    client = docker.from_env()
    removed = 0
    mine = {"label": [LABEL, f"{INSTANCE_LABEL}={instance_id(build_path)}"]}
    for image in client.images.list(filters=mine):
        try:
            client.images.remove(image.id, force=True)
            removed += 1
        except docker.errors.APIError:
            pass  # in use by a container of another test, or gone already
    return removed
