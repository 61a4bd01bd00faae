"""What users see when Docker fails them: one line naming the thing and the fix, in the build's
ErrBuild, its log and its page, and one line (no traceback) in the server's log.

A Dockerfile typo and a missing base image go through the real server. Docker being down is a
unix socket in front of the machine's Docker socket that the test closes and opens again
(DOCKER_HOST points mistryd at it): the machine's dockerd, which other tests use, is never
stopped. The project folder changing under a queued build is the last part."""

from __future__ import annotations

import errno
import logging
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import docker.errors
import pytest
import requests
import urllib3.exceptions
from support import copy_project, docker_cli, make_setup, relay, shut, start_mistryd, wait_for

from mistryd.config import from_dict
from mistryd.docker_runner import (
    INSTANCE_LABEL,
    LABEL,
    DockerRunner,
    build_error,
    explanation,
    instance_id,
    remove_instance_images,
    unreachable,
)
from mistryd.errors import ProjectChanged
from mistryd.logs import LiveLog
from mistryd.projects import folder_fingerprint

TYPO = "dockerfile-typo"
NO_BASE = "missing-base-image"


def page(url: str, project: str, build_id: str) -> str:
    r = requests.get(f"{url}/job/{project}/{build_id}", headers={"Accept": "text/html"},
                     timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def no_traceback(records: list[logging.LogRecord]) -> None:
    assert [r.getMessage() for r in records if r.exc_info] == []


# --- the Dockerfile: docker's own message, not the URL of its API --------------------------------


def test_a_dockerfile_typo_fails_with_dockers_message(start_server, caplog):
    caplog.set_level(logging.INFO, logger="mistryd")
    srv = start_server(projects=(TYPO,))
    info = srv.build(TYPO)
    line = "dockerfile parse error line 2: unknown instruction: RUNN"
    assert info["Status"] == "failed"
    assert info["ErrBuild"] == f"could not build the image: {line}"
    assert line in info["ContainerStdouterr"].splitlines()
    assert line in page(srv.url, TYPO, info["ID"])
    for text in (info["ErrBuild"], info["ContainerStdouterr"], page(srv.url, TYPO, info["ID"])):
        assert "http+docker" not in text and "/build?" not in text
    assert [r.getMessage() for r in caplog.records if line in r.getMessage()] == [
        f"mistryd: build {TYPO}/{info['ID']}: could not build the image: {line}"]
    no_traceback(caplog.records)


def test_a_missing_base_image_is_named_with_the_fix(start_server, caplog):
    caplog.set_level(logging.INFO, logger="mistryd")
    srv = start_server(projects=(NO_BASE,))
    info = srv.build(NO_BASE)
    assert info["Status"] == "failed"
    error = info["ErrBuild"]
    assert error.startswith("could not build the image: base image "
                            "mistryd-test/no-such-base-image:404 could not be pulled: "), error
    assert error.endswith("(fix the FROM line, or pull or load the image on the Docker host)")
    assert "\n" not in error and "http+docker" not in error
    assert error.removeprefix("could not build the image: ") in info["ContainerStdouterr"]
    no_traceback(caplog.records)


# --- Docker down: at start, mid-build, and back --------------------------------------------------


class DockerSocket:
    """A unix socket that forwards to the machine's Docker socket. `down()` is Docker going away
    for whoever talks to it (every connection cut, the socket gone), `up()` is it coming back."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock"):
        self.path, self.target = path, target
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def up(self) -> None:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
            self.path.unlink()
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            shut(s)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            with self._lock:
                self._open += [client, upstream]
            relay(client, upstream)


class ProxiedMistryd:
    """The real `mistryd` command, reaching Docker only through a DockerSocket (DOCKER_HOST)."""

    def __init__(self, root: Path, monkeypatch, projects: tuple[str, ...], **config):
        self.setup = make_setup(root, projects, **config)
        self.socket_dir = Path(tempfile.mkdtemp(prefix="mistryd-", dir="/tmp"))  # a short path
        self.docker = DockerSocket(self.socket_dir / "docker.sock")
        self.monkeypatch = monkeypatch
        self.proc: subprocess.Popen | None = None
        self.url = self.setup.url
        self.instance = instance_id(self.setup.builds)

    @property
    def down_line(self) -> str:
        return f"Docker is not reachable at {self.docker.url} (is dockerd running? systemctl " \
               "start docker)"

    def start(self) -> None:
        with self.monkeypatch.context() as env:
            env.setenv("DOCKER_HOST", self.docker.url)
            self.proc = start_mistryd(self.setup.config, self.setup.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)

    def build(self, project: str, **fields) -> dict:
        r = requests.post(f"{self.url}/jobs", json={"project": project, **fields}, timeout=300)
        assert r.status_code == 201, r.text
        return r.json()

    def log(self) -> str:
        return (self.setup.config.parent / "mistryd.log").read_text()

    def full_log(self, project: str, build_id: str) -> str:
        r = requests.get(f"{self.url}/job/{project}/{build_id}/out.log", timeout=30)
        return r.text if r.status_code == 200 else ""

    def clean(self) -> None:
        self.stop()
        self.docker.down()
        containers = docker_cli("ps", "-aq", "--filter", f"label={INSTANCE_LABEL}={self.instance}")
        if containers.stdout.split():  # a build Docker's "outage" cut: it ran on
            docker_cli("rm", "-f", *containers.stdout.split())
        remove_instance_images(self.setup.builds)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


@pytest.fixture
def proxied(tmp_path, monkeypatch, docker_engine):
    made: list[ProxiedMistryd] = []

    def make(projects: tuple[str, ...], **config) -> ProxiedMistryd:
        server = ProxiedMistryd(tmp_path, monkeypatch, projects, **config)
        made.append(server)
        return server

    yield make
    for server in made:
        server.clean()


def test_docker_down_at_start_serves_hits_fails_builds_in_one_line_and_recovers(proxied):
    srv = proxied(("hello",))
    srv.docker.up()
    srv.start()
    cached = srv.build("hello")
    assert cached["Status"] == "succeeded", cached["ContainerStdouterr"]
    srv.stop()

    srv.docker.down()
    # a container its previous process left (a crash): removed once Docker answers again
    orphan = docker_cli("run", "-d", "--label", f"{LABEL}=1", "--label",
                        f"{INSTANCE_LABEL}={srv.instance}", "debian:bookworm-slim",
                        "sleep", "600").stdout.strip()
    assert orphan, "the orphan container did not start"
    srv.start()  # Docker is down: it starts all the same
    hit = srv.build("hello")
    assert hit["Cached"] and hit["Status"] == "succeeded" and hit["ID"] == cached["ID"]
    failed = srv.build("hello", params={"n": "2"})
    assert failed["Status"] == "failed"
    assert failed["ErrBuild"] == srv.down_line
    assert f"mistryd: {srv.down_line}" in failed["ContainerStdouterr"].splitlines()
    assert srv.down_line in page(srv.url, "hello", failed["ID"])
    assert requests.get(f"{srv.url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{srv.url}/", headers={"Accept": "text/html"}, timeout=10).ok
    assert docker_cli("inspect", orphan).returncode == 0  # nobody could remove it yet

    srv.docker.up()  # Docker is back: no restart needed
    again = srv.build("hello", params={"n": "3"})
    assert again["Status"] == "succeeded", again["ContainerStdouterr"]
    assert docker_cli("inspect", orphan).returncode != 0, "the orphan was not removed"

    log = srv.log()
    assert "Traceback" not in log, log
    assert log.count(f"WARNING mistryd: {srv.down_line}; serving cached builds and pages, new "
                     "builds fail until Docker answers") == 1, log
    assert f"failed: {srv.down_line}" in log


@pytest.mark.parametrize("step", ["image", "container"])
def test_docker_going_down_mid_build_ends_the_build_in_one_line(proxied, step):
    project = "sec-img-sleep" if step == "image" else "sleeper"
    srv = proxied((project,))
    if step == "image":  # a new token: no layer of an earlier run is reused
        (srv.setup.projects / project / "token").write_text(uuid.uuid4().hex)
    srv.docker.up()
    srv.start()
    params = {} if step == "image" else {"sleep": "600"}
    build_id = requests.post(f"{srv.url}/jobs?async", json={"project": project,
                                                            "params": params},
                             timeout=30).json()["id"]
    running = "image build sleeping" if step == "image" else "sleeping 600"
    wait_for(lambda: running in srv.full_log(project, build_id))

    srv.docker.down()
    wait_for(lambda: requests.get(f"{srv.url}/job/{project}/{build_id}", timeout=10,
                                  headers={"Accept": "application/json"}).json()["State"]
             == "ready")
    info = requests.get(f"{srv.url}/job/{project}/{build_id}", timeout=10,
                        headers={"Accept": "application/json"}).json()["BuildInfo"]
    assert info["Status"] == "failed"
    assert info["ErrBuild"] == srv.down_line
    assert srv.down_line in srv.full_log(project, build_id)
    log = srv.log()
    assert "Traceback" not in log, log
    assert f"build {project}/{build_id} failed: {srv.down_line}" in log

    srv.docker.up()  # back: nothing of the cut build stays once the server talks to Docker again
    if step == "image":  # the daemon ends a build whose client hung up
        cut = re.findall(r"Running in ([0-9a-f]{12,64})", srv.full_log(project, build_id))[-1]
    else:  # the container ran on without us; the server's next run removes it
        cut = docker_cli("ps", "-aq", "--filter", f"label={INSTANCE_LABEL}={srv.instance}").stdout
        assert cut.strip(), "the cut build's container is not there"
        assert srv.build(project, params={"sleep": "0"})["Status"] == "succeeded"
    wait_for(lambda: docker_cli("container", "inspect", cut.strip()).returncode != 0)


# --- the pure parts: which line for which failure -------------------------------------------------


def test_the_unreachable_line_names_the_endpoint_and_the_fix():
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    denied = PermissionError(errno.EACCES, "Permission denied")
    # what the SDK raises: requests' error around urllib3's around the operating system's
    wrapped = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", denied))
    assert unreachable("unix:///var/run/docker.sock", refused).message == (
        "Docker is not reachable at unix:///var/run/docker.sock (is dockerd running? systemctl "
        "start docker)")
    assert unreachable("tcp://10.0.0.5:2375", refused).message == (
        "Docker is not reachable at tcp://10.0.0.5:2375 (is the Docker engine there running? "
        "check DOCKER_HOST)")
    assert unreachable("unix:///run/docker.sock", wrapped).message == (
        "Docker is not reachable at unix:///run/docker.sock: permission denied (run mistryd as "
        "root or as a member of the docker group)")
    bad_host = docker.errors.DockerException("Invalid bind address format: nonsense")
    assert unreachable("nonsense", bad_host).message == (
        "Docker is not reachable at nonsense: Invalid bind address format: nonsense "
        "(check DOCKER_HOST)")


def test_build_errors_are_dockers_line_and_a_failed_from_names_the_image():
    assert build_error("The command '/bin/sh -c false' returned a non-zero code: 1\n",
                       "RUN false") == "The command '/bin/sh -c false' returned a non-zero code: 1"
    assert build_error("pull access denied\nrepository does not exist",
                       "FROM --platform=linux/amd64 acme/base:1 AS build") == (
        "base image acme/base:1 could not be pulled: pull access denied; repository does not "
        "exist (fix the FROM line, or pull or load the image on the Docker host)")
    response = requests.Response()
    response.status_code, response.reason = 500, "Internal Server Error"
    api = docker.errors.APIError("500 Server Error for http+docker://localhost/v1.41/build?t=x",
                                 response=response, explanation=None)
    assert explanation(api) == "HTTP 500 Internal Server Error"
    api.explanation = "dockerfile parse error line 2: unknown instruction: RUNN"
    assert explanation(api) == "dockerfile parse error line 2: unknown instruction: RUNN"


# --- the project changes between its key and its image -------------------------------------------


def image_exists(tag: str) -> bool:
    return docker_cli("image", "inspect", tag).returncode == 0


def test_a_project_changed_while_its_build_was_queued_fails_and_tags_no_image(start_server,
                                                                             caplog):
    caplog.set_level(logging.INFO, logger="mistryd")
    srv = start_server(projects=("sleeper", "hello"), job_concurrency=1)
    runner, scheduler = srv.server.runner, srv.server.scheduler
    blocker = srv.post_job({"project": "sleeper", "params": {"sleep": "600"}},
                           asynchronous=True).json()["id"]
    blocking = scheduler.in_flight("sleeper", blocker).job.log
    wait_for(lambda: blocking.path is not None
             and "sleeping 600" in blocking.path.read_text(errors="replace"))
    old = srv.server.projects.fingerprint("hello")
    queued = srv.post_job({"project": "hello"}, asynchronous=True).json()["id"]
    flight = scheduler.in_flight("hello", queued)
    assert flight is not None
    with open(srv.projects_path / "hello" / "build.sh", "a") as f:
        f.write('echo "edited while queued"\n')
    requests.post(f"{srv.url}/jobs/sleeper/{blocker}/cancel", timeout=120).raise_for_status()

    info = flight.wait(120)
    assert info is not None and info.Status == "failed"
    assert info.ErrBuild == "project hello changed while the build was queued; request it again"
    assert not image_exists(runner.image_tag("hello", old))
    no_traceback(caplog.records)

    again = srv.build("hello")  # asked again: the new content, under its own key and tag
    assert again["Status"] == "succeeded" and again["ID"] != queued
    assert "edited while queued" in again["ContainerStdouterr"]
    new = srv.server.projects.fingerprint("hello")
    assert new != old and image_exists(runner.image_tag("hello", new))


class EditsDuringTheBuild(DockerRunner):
    """Fault injection: the project folder changes while its image builds."""

    def build_image(self, project, context, tag, log, **kw):
        image = super().build_image(project, context, tag, log, **kw)
        (Path(context) / "late-edit.txt").write_text("changed during the image build\n")
        return image


def test_a_project_changed_while_its_image_built_leaves_no_tag(tmp_path, docker_engine):
    projects = tmp_path / "projects"
    context = copy_project(projects, "hello")
    runner = EditsDuringTheBuild(from_dict({"projects_path": str(projects),
                                            "build_path": str(tmp_path / "builds")}))
    fingerprint = folder_fingerprint(context)
    log = LiveLog()
    try:
        with pytest.raises(ProjectChanged) as raised:
            runner.ensure_image("hello", context, fingerprint, log)
        assert raised.value.message == ("project hello changed while its image was building; "
                                        "request it again")
        assert not image_exists(runner.image_tag("hello", fingerprint))
        assert runner.image_build_in_progress("hello", fingerprint) is None
    finally:
        remove_instance_images(tmp_path / "builds")
