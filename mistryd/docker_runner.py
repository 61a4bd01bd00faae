"""Everything that talks to Docker: image builds, container runs, clean-up. The only module that
imports the Docker SDK. Every image and container it makes carries the LABEL below, so start-up and
`rebuild` touch only what is ours, never the host's other images or containers.

Docker's failures reach users as one line: `DockerUnavailable` when the engine does not answer
(the client connects on first use, so mistryd starts and serves cache hits while Docker is down,
and builds again as soon as it answers), Docker's own message when it refuses something (a
Dockerfile that does not parse, a base image it cannot pull), never a URL of its API."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import docker.utils
import requests
import urllib3.exceptions

from .config import Config, ProjectSettings
from .errors import DockerRefused, DockerUnavailable, MistryError, ProjectChanged
from .layout import Layout
from .logs import IMAGE, STDERR, STDOUT, LogSink
from .ordered_output import FOLDER as OUTPUT_FOLDER
from .ordered_output import OrderedOutput, static_busybox
from .projects import folder_fingerprint

LABEL = "io.mistryd.managed"
PROJECT_LABEL = "io.mistryd.project"
BUILD_LABEL = "io.mistryd.build"
# Which server a container belongs to (a hash of its build_path): start-up removes the orphans of
# its own previous process only, never the running builds of another mistryd on the same engine.
INSTANCE_LABEL = "io.mistryd.instance"
MAX_STDERR = 1 << 20
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"  # where the SDK connects without DOCKER_HOST

log = logging.getLogger("mistryd")


class ImageBuildError(Exception):
    """The project's Dockerfile did not build; the message holds docker's error (the failing line)."""


class ImageBuildTimedOut(ImageBuildError):
    """The image build ran past the project's `build_timeout` and was stopped."""


class ImageBuildCancelled(ImageBuildError):
    """The job was cancelled while its image was building (or while it waited for that build)."""


@dataclass(frozen=True)
class ContainerRun:
    """What a kind of job adds to its build container (push builds, mistryd/push/): the command
    instead of the image's, its working folder, environment variables and extra bind mounts
    (host path -> container path, read-write)."""

    command: list[str] | None = None
    working_dir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False  # the builder runs no container at all


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


def docker_endpoint() -> str:
    """Where the Docker SDK connects: DOCKER_HOST, as `docker.from_env` reads it."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def unreachable(endpoint: str, error: BaseException) -> DockerUnavailable:
    """The one line for an engine that does not answer, with the fix that fits the cause."""
    cause = _os_error(error)
    if cause is not None and cause.errno in (errno.EACCES, errno.EPERM):
        return DockerUnavailable(f"Docker is not reachable at {endpoint}: permission denied "
                                 "(run mistryd as root or as a member of the docker group)")
    if isinstance(error, docker.errors.DockerException) and error.__context__ is None:
        # raised by the SDK itself, not by a failed connection: a DOCKER_HOST it cannot use
        return DockerUnavailable(f"Docker is not reachable at {endpoint}: {error} "
                                 "(check DOCKER_HOST)")
    hint = "is dockerd running? systemctl start docker" if endpoint.startswith("unix://") \
        else "is the Docker engine there running? check DOCKER_HOST"
    return DockerUnavailable(f"Docker is not reachable at {endpoint} ({hint})")


def _os_error(error: BaseException) -> OSError | None:
    """The operating system's error under a connection failure (requests and urllib3 wrap it in
    their own exceptions, in their arguments or as the cause)."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and isinstance(e.errno, int):
            return e
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return None


def explanation(error: docker.errors.APIError) -> str:
    """Docker's own message of an API error, on one line (never the URL of the call)."""
    text = one_line(error.explanation if isinstance(error.explanation, str) else "")
    if not text:
        response = error.response
        text = f"HTTP {error.status_code} {getattr(response, 'reason', '') or ''}".strip()
    return text


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def build_error(error: str, step: str | None) -> str:
    """Docker's error of an image build on one line; when the FROM step failed it names the base
    image, which docker's message (about a registry) does not."""
    error = one_line(error)
    words = (step or "").split()
    if words and words[0].upper() == "FROM":
        image = next((w for w in words[1:] if not w.startswith("--")), "?")
        return (f"base image {image} could not be pulled: {error} (fix the FROM line, or pull "
                "or load the image on the Docker host)")
    return error


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


def _check_unchanged(project: str, context: Path, fingerprint: str, when: str) -> None:
    """ProjectChanged unless the folder still has the content the job's key was made from."""
    try:
        now = folder_fingerprint(context)
    except OSError as e:
        raise ProjectChanged(project, f"{when} (its folder cannot be read: {e.strerror})") from None
    if now != fingerprint:
        raise ProjectChanged(project, when)


def _deadline(timeout: int) -> float | None:
    return time.monotonic() + timeout if timeout else None


class _BuildStream:
    """One image build's HTTP response, shared with the thread that may end it early: the daemon
    cancels a build (killing and removing its `RUN` container) when its client hangs up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self.stopped = False

    def attach(self, response: requests.Response) -> None:
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


def _wake_reader(response: requests.Response) -> None:
    try:
        response.raw.shutdown()  # the reading thread's blocked recv() returns; it then closes
    except (ValueError, RuntimeError, OSError):
        pass  # already closed or released: nothing is reading


@dataclass
class _ImageBuild:
    """What one build's stream told us, filled by the thread that reads it."""

    log: LogSink
    stream: _BuildStream = field(default_factory=_BuildStream)
    done: threading.Event = field(default_factory=threading.Event)
    image_id: str | None = None
    error: str | None = None  # docker's error: the Dockerfile did not build
    failure: Exception | None = None  # the talk with docker failed (reported by the waiting thread)
    container: str | None = None  # the running RUN step's container
    step: str | None = None  # the step docker runs now ("FROM debian:bookworm-slim")

    def take(self, chunk: dict) -> None:
        if "stream" in chunk:
            self.log.write(chunk["stream"].encode("utf-8", "replace"), IMAGE)
            if running := _RUNNING_IN.search(chunk["stream"]):
                self.container = running.group(1)
            if step := _STEP.search(chunk["stream"]):
                self.step = step.group(1).strip()
        if "error" in chunk:
            self.error = build_error(chunk["error"], self.step)
        if "aux" in chunk and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]


_RUNNING_IN = re.compile(r"Running in ([0-9a-f]{12,64})")
_STEP = re.compile(r"^Step \d+/\d+ : (.*)$", re.MULTILINE)
# What a broken connection to the engine looks like, besides requests' ConnectionError: worth a
# ping to find out whether the engine is gone (anything else is a bug and keeps its traceback).
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                     OSError, docker.errors.DockerException)
_POLL = 0.1  # how soon a cancel or a deadline is noticed, image build or container (seconds)
_STOP_GRACE = 10  # how long a stopped build's reader may take to let go (seconds)


@dataclass
class DockerRunner:
    config: Config
    _built: dict[str, str] = field(default_factory=dict)  # tag -> image id
    _sources: dict[str, tuple[str, Path, str]] = field(default_factory=dict)  # id -> its inputs
    _building: dict[str, threading.Event] = field(default_factory=dict)  # tag -> set when done
    _building_guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.instance = instance_id(self.config.build_path)
        self.endpoint = docker_endpoint()
        self._reading = threading.local()  # the build stream the current thread is opening
        self._client: docker.DockerClient | None = None
        self._connecting = threading.Lock()
        self._orphans_left = False  # start-up could not remove them: Docker was down
        self._left_behind: set[str] = set()  # containers of builds cut by Docker going away

    # --- the engine ---------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        """The engine's client, connected on first use and again after a failed attempt, so the
        server starts while Docker is down and builds as soon as it answers. Raises
        DockerUnavailable until then."""
        client = self._client
        if client is not None:
            return client
        with self._connecting:
            if self._client is None:
                try:
                    client = docker.from_env(timeout=600)
                except docker.errors.DockerException as e:
                    raise unreachable(self.endpoint, e) from None
                client.api.hooks["response"].append(self._attach_build_response)
                if self._orphans_left:  # before any build of ours can make a container
                    try:
                        removed = self._remove_orphans(client)
                    except docker.errors.APIError as e:
                        raise DockerRefused(f"could not remove old containers: "
                                            f"{explanation(e)}") from e
                    except _TRANSPORT_ERRORS as e:
                        raise unreachable(self.endpoint, e) from e
                    self._orphans_left = False
                    log.info("mistryd: Docker answers at %s; removed %d orphaned container(s) "
                             "of the previous process", self.endpoint, len(removed))
                self._client = client
        return self._client

    def reachable(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001 - any failure to answer a ping means "not reachable"
            return False

    def docker_problem(self, error: Exception, doing: str) -> Exception:
        """What a failed Docker call means for the user: DockerUnavailable when the engine does
        not answer, DockerRefused with Docker's own message when it answered with an error. Any
        other exception is unexpected and is returned as it is."""
        if isinstance(error, MistryError | ImageBuildError):
            return error
        if isinstance(error, docker.errors.APIError):
            return DockerRefused(f"{doing}: {explanation(error)}")
        if isinstance(error, requests.exceptions.ConnectionError):
            return unreachable(self.endpoint, error)
        if isinstance(error, _TRANSPORT_ERRORS) and not self.reachable():
            return unreachable(self.endpoint, error)
        return error

    @contextlib.contextmanager
    def _talking_to_docker(self, doing: str) -> Iterator[None]:
        try:
            yield
        except Exception as e:
            problem = self.docker_problem(e, doing)
            if problem is e:
                raise
            raise problem from e

    # --- images -------------------------------------------------------------------------------

    def image_tag(self, project: str, fingerprint: str) -> str:
        return image_tag(project, fingerprint, self.instance)

    def ensure_image(self, project: str, context: Path, fingerprint: str, log: LogSink,
                     rebuild: bool = False, settings: ProjectSettings | None = None,
                     cancel: threading.Event | None = None) -> str:
        """Build the project's image unless this server already built it for this content (and
        it still exists). Waits for another job's build of the same image; raises
        ImageBuildTimedOut after `settings.build_timeout` and ImageBuildCancelled on `cancel`.

        An image is tagged with the fingerprint of what it was built from, so the folder is
        checked against `fingerprint` right before the build and again after it: ProjectChanged
        when it no longer matches (and no image keeps that tag)."""
        settings = settings or self.config.for_project(project)
        cancel = cancel or threading.Event()
        deadline = _deadline(settings.build_timeout)
        tag = self.image_tag(project, fingerprint)
        finished = self._claim(tag, cancel, deadline, settings.build_timeout)
        try:
            if not rebuild and (image_id := self._memoized(tag, log)):
                return image_id
            _check_unchanged(project, context, fingerprint, "while the build was queued")
            image_id = self.build_image(project, context, tag, log, nocache=rebuild,
                                        pull=rebuild and self.config.pull_base,
                                        settings=settings, cancel=cancel, deadline=deadline)
            try:
                _check_unchanged(project, context, fingerprint, "while its image was building")
            except ProjectChanged:
                self._untag(tag)
                raise
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

    def build_image(self, project: str, context: Path, tag: str, log: LogSink,
                    nocache: bool = False, pull: bool = False,
                    settings: ProjectSettings | None = None, cancel: threading.Event | None = None,
                    deadline: float | None = None) -> str:
        """Build `tag` under the project's limits; stop it at `deadline` (default: build_timeout
        from now) or on `cancel`. The daemon cancels a build whose client hangs up, so the build
        is read in a thread of its own and stopped by closing its connection."""
        settings = settings or self.config.for_project(project)
        if deadline is None:
            deadline = _deadline(settings.build_timeout)
        log.line(f"mistryd: building image {tag}{' without cache' if nocache else ''}", IMAGE)
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
        with self._talking_to_docker("could not build the image"):
            if stop is not None:
                build.stream.stop()
                reader.join(_STOP_GRACE)
                if build.container:  # the daemon removes it on hang-up; make sure of it
                    self._remove_container(build.container)
                log.line(f"mistryd: {stop}", IMAGE)
                raise stop
            if build.error is not None:
                log.line(build.error, IMAGE)
                raise ImageBuildError(build.error)
            if build.failure is not None:
                raise build.failure
            return build.image_id or self.client.images.get(tag).attrs["Id"]

    def _read_build(self, build: _ImageBuild, options: dict) -> None:
        self._reading.stream = build.stream
        try:
            for chunk in self.client.api.build(**options):
                build.take(chunk)
                if build.error is not None:
                    break
        except docker.errors.APIError as e:  # refused before it began: "dockerfile parse error"
            build.error = explanation(e)
        except Exception as e:  # noqa: BLE001 - reported by the waiting thread
            if not build.stream.stopped:
                build.failure = e
        finally:
            self._reading.stream = None
            build.stream.close()
            build.done.set()

    def _attach_build_response(self, response: requests.Response, *args, **kwargs) -> requests.Response:
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

    def _memoized(self, tag: str, log: LogSink) -> str | None:
        """The image this server built for `tag`, if it still exists: another process may have
        removed it (one cheap API call)."""
        image_id = self._built.get(tag)
        if image_id is None:
            return None
        with self._talking_to_docker("could not inspect the image"):
            gone = self._gone(lambda: self.client.api.inspect_image(image_id))
        if gone:
            log.line(f"mistryd: image {tag} was removed outside mistryd; building it again", IMAGE)
            self._forget(image_id)
            return None
        log.line(f"mistryd: using image {tag}", IMAGE)
        return image_id

    def remove_image_tag(self, tag: str) -> None:
        """Take `tag` off its image (a verification's own image, mistryd/verify.py)."""
        self._untag(tag)

    def _untag(self, tag: str) -> None:
        """Take `tag` off the image just built (the image goes with it unless it has others)."""
        with self._talking_to_docker(f"could not remove the image tag {tag}"):
            self._gone(lambda: self.client.api.remove_image(tag))

    @staticmethod
    def _gone(call) -> bool:
        """Make the call; True when Docker answers that its object does not exist."""
        try:
            call()
        except docker.errors.NotFound:
            return True
        return False

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

    def run(self, image: str, name: str, project: str, data_dir: Path, log: LogSink,
            settings: ProjectSettings, cancel: threading.Event | None = None,
            extra: ContainerRun | None = None) -> RunResult:
        """Run one build container with `data_dir` at /data; stream its output into `log`.
        The container is killed when `settings.build_timeout` passes or `cancel` is set.
        DockerUnavailable or DockerRefused when Docker fails it."""
        with self._talking_to_docker("could not run the build container"):
            return self._run(image, name, project, data_dir, log, settings, cancel, extra)

    def _run(self, image: str, name: str, project: str, data_dir: Path, log: LogSink,
             settings: ProjectSettings, cancel: threading.Event | None,
             extra: ContainerRun | None = None) -> RunResult:
        self._remove_left_behind()
        self._remove_container(name)  # a stale container with this name must not block the build
        cancel = cancel or threading.Event()
        options = self._container_options(project, name, data_dir, settings)
        if extra is not None:
            _add_extra(options, extra)
        shell = static_busybox(Layout(self.config.build_path).state_dir()) if not settings.tty \
            else None
        output = OrderedOutput(data_dir.parent / OUTPUT_FOLDER, log, shell) if shell else None
        try:
            return self._run_container(image, name, options, output, log, settings, cancel)
        finally:
            if output is not None:
                output.close()

    def _create(self, image: str, name: str, options: dict, output: OrderedOutput | None):
        if output is not None:
            config = self.client.api.inspect_image(image)["Config"] or {}
            argv = [*(config.get("Entrypoint") or []),
                    *(options.get("command") or config.get("Cmd") or [])]
            if argv:  # none at all: Docker refuses the container as before
                extra = output.container_options(argv)
                options = {**options, **extra,
                           "volumes": {**options["volumes"], **extra["volumes"]}}
        return self.client.containers.create(image, name=name, detach=True, **options)

    def _run_container(self, image: str, name: str, options: dict, output: OrderedOutput | None,
                       log: LogSink, settings: ProjectSettings,
                       cancel: threading.Event) -> RunResult:
        try:
            container = self._create(image, name, options, output)
        except docker.errors.ImageNotFound:
            try:
                image = self._rebuild_lost(image, log, settings, cancel)
            except ImageBuildCancelled:
                return RunResult(-1, "", cancelled=True)
            except ImageBuildTimedOut:
                return RunResult(-1, "", timed_out=True)
            container = self._create(image, name, options, output)
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
                except (docker.errors.APIError, requests.exceptions.RequestException):
                    pass  # it ended on its own meanwhile, or Docker is gone (the run says so)

        try:
            # Attached before the start, the stream carries every byte the container prints
            # outside the build's own output (which `output` reads: mistryd/ordered_output.py),
            # or all of it (a terminal, or no static busybox: then the order between stdout and
            # stderr is the engine's, docs/web.md "Log order"). Following the log file instead
            # (`logs(follow=True)`) ends early when a container that prints a lot exits on a
            # busy engine (Docker 20.10 cut a 100,000-line log at line 5,335). Demultiplexed,
            # each write says which stream it came from (out.log.marks).
            attached = container.attach(stdout=True, stderr=True, stream=True, logs=False,
                                        demux=True)
            if output is not None:
                output.start()
            container.start()
            watcher = threading.Thread(target=watch, daemon=True, name=f"watch-{name[:20]}")
            watcher.start()
            for out, err in attached:
                if out:
                    # a terminal ends lines with CR LF: the log keeps plain LF
                    log.write(out.replace(b"\r\n", b"\n") if settings.tty else out, STDOUT)
                if err:
                    log.write(err, STDERR)
            status = container.wait()
            ended.set()
            watcher.join(5)
            stderr = container.logs(stdout=False, stderr=True)
            if output is not None:
                output.finish()
                stderr += output.stderr
            stderr = stderr[-MAX_STDERR:]
            result = RunResult(status.get("StatusCode", -1), stderr.decode("utf-8", "replace"),
                               timed_out=outcome.get("timed_out", False),
                               cancelled=outcome.get("cancelled", False))
        except BaseException:
            ended.set()
            # the first error is the one to report: Docker may be what failed, and then this
            # fails too; the next run removes the container (or the next start does)
            try:
                self._remove_container(name)
            except Exception:  # noqa: BLE001
                self._left_behind.add(name)
            raise
        self._remove_container(name)
        return result

    def _rebuild_lost(self, image: str, log: LogSink, settings: ProjectSettings,
                      cancel: threading.Event) -> str:
        """The image was removed behind our back (after ensure_image checked it): build it again
        from the inputs it was built from. Raises ImageBuildError like ensure_image."""
        source = self._sources.get(image)
        if source is None:  # not one of ours: nothing to rebuild it from
            raise ImageBuildError(f"image {image} does not exist (removed outside mistryd?); "
                                  "build the project again")
        self._forget(image)
        project, context, fingerprint = source
        log.line(f"mistryd: image {image[:19]} was removed outside mistryd; building it again",
                 IMAGE)
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
        if settings.tty:  # one channel: the order as written (docs/web.md, "Log order")
            options["tty"] = True
        return options

    def _remove_left_behind(self) -> None:
        """Best effort: a container that cannot be removed must not fail every build after it."""
        for name in list(self._left_behind):
            try:
                self._remove_container(name)
            except Exception:  # noqa: BLE001 - tried again before the next run
                continue
            self._left_behind.discard(name)

    def remove_container(self, name: str) -> None:
        """Remove a build container, running or not (one a dead builder process left)."""
        with self._talking_to_docker("could not remove a build container"):
            self._remove_container(name)

    def _remove_container(self, name: str) -> None:
        try:
            self.client.api.remove_container(name, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # removal already in progress
                raise

    @property
    def orphans_left(self) -> bool:
        """Whether the previous process's containers still wait to be removed."""
        return self._orphans_left

    def remove_orphans_first(self) -> None:
        """Remove the previous process's containers before this runner makes its first one
        (the serving process could not: Docker was down when it recovered)."""
        self._orphans_left = True

    def remove_orphans(self) -> list[str]:
        """Containers of this server's previous process (left by a crash): remove them. While
        Docker is down this logs one line and returns nothing: they are removed when it answers,
        before any new container is made."""
        try:
            client = self.client
        except DockerUnavailable as e:
            self._orphans_left = True
            log.warning("mistryd: %s; serving cached builds and pages, new builds fail until "
                        "Docker answers", e.message)
            return []
        with self._talking_to_docker("could not remove old containers"):
            return self._remove_orphans(client)

    def _remove_orphans(self, client: docker.DockerClient) -> list[str]:
        removed = []
        mine: dict[str, str | list[str] | bool] = {"label": [LABEL, f"{INSTANCE_LABEL}={self.instance}"]}
        for c in client.containers.list(all=True, filters=mine):
            try:
                c.remove(force=True, v=True)
            except docker.errors.NotFound:
                continue  # gone meanwhile
            removed.append(c.name or c.short_id)
        return removed

    def prune_images(self) -> list[str]:
        """Dangling images of this server only (old versions left untagged by its rebuilds):
        never another mistryd's on the same engine."""
        mine = {"dangling": True, "label": [LABEL, f"{INSTANCE_LABEL}={self.instance}"]}
        with self._talking_to_docker("could not prune old images"):
            pruned = self.client.images.prune(filters=mine)
        return [d.get("Deleted", "") for d in pruned.get("ImagesDeleted") or []]


def _add_extra(options: dict, extra: ContainerRun) -> None:
    """A job's own command, folder, variables and mounts on top of the server's options."""
    if extra.command is not None:
        options["command"] = extra.command
    if extra.working_dir is not None:
        options["working_dir"] = extra.working_dir
    options["environment"] = {**options["environment"], **extra.environment}
    for src, target in extra.mounts.items():
        options["volumes"][src] = {"bind": target, "mode": "rw"}


def remove_instance_images(build_path: Path | str) -> int:
    """Remove every image the mistryd serving `build_path` built (by its instance label), for
    test and benchmark servers that go away with their build_path. Returns how many."""
    client = docker.from_env()
    removed = 0
    mine = {"label": [LABEL, f"{INSTANCE_LABEL}={instance_id(build_path)}"]}
    for image in client.images.list(filters=mine):
        try:
            image.remove(force=True)
            removed += 1
        except docker.errors.APIError:
            pass  # in use by a container of another test, or gone already
    return removed
