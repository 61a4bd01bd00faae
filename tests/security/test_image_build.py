"""The image build step under the project's limits (security items 6 and 8): build_timeout and
cancel stop it and leave no container, RUN steps get the memory limit and the network mode, and
images belong to one server (their tag and prune are per instance), rebuilt when removed."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from support import copy_project, docker_cli

from mistryd.cli import main
from mistryd.config import from_dict
from mistryd.docker_runner import (
    INSTANCE_LABEL,
    DockerRunner,
    ImageBuildCancelled,
    ImageBuildTimedOut,
)
from mistryd.logs import LiveLog
from mistryd.projects import folder_fingerprint

SLEEPER = "sec-img-sleep"
LIMITS = "sec-img-limits"


# --- helpers --------------------------------------------------------------------------------------


def fresh_projects(root: Path, *names: str) -> Path:
    """Copies of the test projects with a new token each, so no layer of an earlier run is
    reused (docker's layer cache does not know about limits)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        copy_project(root, name)
        if (root / name / "token").exists():
            (root / name / "token").write_text(uuid.uuid4().hex)
    return root


def running_in(log: str) -> str:
    """The id of the RUN step's container, as the classic builder reports it."""
    found = re.findall(r"Running in ([0-9a-f]{12,64})", log)
    assert found, f"no RUN step started:\n{log}"
    return found[-1]


def assert_container_gone(container: str) -> None:
    out = docker_cli("container", "inspect", container)
    assert out.returncode != 0 and "No such" in out.stderr, f"container {container} remains"


def wait_for_text(log: LiveLog, text: str, timeout: float = 60) -> None:
    """Wake on each write to the log until `text` is in it."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if log.path is not None and text in log.path.read_text(errors="replace"):
            return
        seen = log.size
        log.wait(seen, deadline - time.monotonic())
    raise AssertionError(f"{text!r} never appeared in the log")


class Janitor:
    """The images a test makes: those of its servers (by instance label) and the unlabelled
    step images a stopped build leaves as layer cache (read from its log)."""

    def __init__(self) -> None:
        self.instances: list[str] = []
        self.steps: set[str] = set()

    def __call__(self, instance: str) -> None:
        self.instances.append(instance)

    def steps_of(self, log: str) -> None:
        """The images of the steps after FROM (FROM's is the base image: never remove it)."""
        after_from = log.split("Step 2/", 1)[-1] if "Step 2/" in log else ""
        self.steps.update(re.findall(r"^ ---> ([0-9a-f]{12})$", after_from, re.MULTILINE))

    def clean(self) -> None:
        for instance in self.instances:
            ids = docker_cli("images", "-aq", "--filter", f"label={INSTANCE_LABEL}={instance}")
            if ids.stdout.split():
                docker_cli("rmi", "-f", *set(ids.stdout.split()))
        untagged = [i for i in self.steps if docker_cli(
            "image", "inspect", "--format", "{{len .RepoTags}}", i).stdout.strip() == "0"]
        if untagged:  # without -f: a step image that something else uses stays
            docker_cli("rmi", *untagged)


@pytest.fixture
def our_images():
    janitor = Janitor()
    yield janitor
    janitor.clean()


def make_runner(tmp_path: Path, name: str, remember, **config) -> DockerRunner:
    projects = tmp_path / f"{name}-projects"
    projects.mkdir(exist_ok=True)
    runner = DockerRunner(from_dict({"projects_path": str(projects),
                                     "build_path": str(tmp_path / f"{name}-builds"), **config}))
    remember(runner.instance)
    return runner


def open_log(path: Path) -> LiveLog:
    log = LiveLog()
    log.open(path)
    return log


class InThread:
    """Call `fn` in a thread; keep what it returned or raised."""

    def __init__(self, fn, *args, **kwargs):
        self.outcome: list = []
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn, args, kwargs) -> None:
        try:
            self.outcome.append(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            self.outcome.append(e)

    def result(self, timeout: float):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout}s"
        return self.outcome[0]


# --- item 6: the image build obeys build_timeout, cancel and the limits --------------------------


def test_build_timeout_stops_the_image_build_and_leaves_no_container(start_server, tmp_path,
                                                                    our_images):
    pp = fresh_projects(tmp_path / "p", SLEEPER)
    srv = start_server(projects_path=pp, project_overrides={SLEEPER: {"build_timeout": 2}})
    our_images(srv.server.runner.instance)
    info = srv.build(SLEEPER)  # its RUN sleeps 600 s: only the timeout can end it
    assert info["Status"] in ("failed", "timed-out")
    assert "image build timed out after 2s" in info["ErrBuild"]
    our_images.steps_of(info["ContainerStdouterr"])
    assert "image build sleeping" in info["ContainerStdouterr"]
    assert_container_gone(running_in(info["ContainerStdouterr"]))


def test_cancel_stops_the_image_build_and_a_waiting_job_honours_its_own(tmp_path, our_images,
                                                                        docker_engine):
    runner = make_runner(tmp_path, "a", our_images)
    context = fresh_projects(tmp_path / "p", SLEEPER) / SLEEPER
    fingerprint = folder_fingerprint(context)  # ensure_image checks the folder against it
    settings = runner.config.for_project(SLEEPER)
    builder_log, builder_cancel = open_log(tmp_path / "a.log"), threading.Event()
    building = InThread(runner.ensure_image, SLEEPER, context, fingerprint, builder_log,
                        settings=settings, cancel=builder_cancel)
    wait_for_text(builder_log, "image build sleeping")
    in_progress = runner.image_build_in_progress(SLEEPER, fingerprint)
    assert in_progress is not None and not in_progress.is_set()

    # A job waiting for that build (the per-image lock) gives up on its own cancel...
    waiter_cancel = threading.Event()
    waiting = InThread(runner.ensure_image, SLEEPER, context, fingerprint,
                       open_log(tmp_path / "b.log"), settings=settings, cancel=waiter_cancel)
    waiter_cancel.set()
    assert isinstance(waiting.result(60), ImageBuildCancelled)
    # ... and on its own deadline.
    short = dataclasses.replace(settings, build_timeout=1)
    timed = InThread(runner.ensure_image, SLEEPER, context, fingerprint,
                     open_log(tmp_path / "c.log"), settings=short)
    error = timed.result(60)
    assert isinstance(error, ImageBuildTimedOut) and "timed out after 1s" in str(error)
    assert not in_progress.is_set()  # the first build went on meanwhile

    builder_cancel.set()
    assert isinstance(building.result(60), ImageBuildCancelled)  # its RUN sleeps 600 s
    assert in_progress.is_set() and runner.image_build_in_progress(SLEEPER, fingerprint) is None
    log_text = (tmp_path / "a.log").read_text()
    our_images.steps_of(log_text)
    assert "mistryd: image build cancelled" in log_text
    assert_container_gone(running_in(log_text))


def test_run_steps_get_the_memory_limit_and_the_network_mode(start_server, tmp_path, our_images):
    pp = fresh_projects(tmp_path / "p", LIMITS)
    srv = start_server(projects_path=pp, memory="64m",
                       project_overrides={LIMITS: {"network_mode": "none"}})
    our_images(srv.server.runner.instance)
    info = srv.build(LIMITS)
    assert info["Status"] == "succeeded", info["ContainerStdouterr"]
    log = info["ContainerStdouterr"]
    assert f"memory: {64 * 1024 * 1024}\n" in log
    assert "net: lo \n" in log  # no interface but loopback: the build has no network


# --- item 8: images per server, rebuilt when removed behind its back -----------------------------


def test_an_image_removed_behind_the_servers_back_is_built_again(start_server, our_images):
    srv = start_server(projects=("hello",))
    our_images(srv.server.runner.instance)
    assert srv.build("hello")["Status"] == "succeeded"
    tag = srv.server.runner.image_tag("hello", srv.server.projects.fingerprint("hello"))
    assert docker_cli("rmi", "-f", tag).returncode == 0
    again = srv.build("hello", params={"n": "2"})
    assert again["Status"] == "succeeded", again["ContainerStdouterr"]
    assert "removed outside mistryd; building it again" in again["ContainerStdouterr"]


def test_run_builds_again_an_image_removed_after_ensure_image(tmp_path, our_images, docker_engine):
    runner = make_runner(tmp_path, "a", our_images)
    context = fresh_projects(tmp_path / "p", "hello") / "hello"
    log = open_log(tmp_path / "out.log")
    image = runner.ensure_image("hello", context, folder_fingerprint(context), log)
    assert docker_cli("rmi", "-f", image).returncode == 0
    data = tmp_path / "data"
    for sub in ("params", "artifacts", "cache"):
        (data / sub).mkdir(parents=True)
        (data / sub).chmod(0o777)  # the container runs as config `uid`, not as the test's user
    result = runner.run(image, f"mistry-test-{uuid.uuid4().hex[:8]}", "hello", data, log,
                        runner.config.for_project("hello"))
    assert result.exit_code == 0, (tmp_path / "out.log").read_text()
    assert (data / "artifacts" / "out.txt").read_text() == "hello\n"
    assert "was removed outside mistryd; building it again" in (tmp_path / "out.log").read_text()


def test_two_servers_on_one_engine_build_their_own_images(start_server, tmp_path, our_images):
    first = start_server(projects=("hello",))
    second = start_server(projects=("hello",), build_path=tmp_path / "other-builds")
    tags = []
    for srv in (first, second):
        our_images(srv.server.runner.instance)
        assert srv.build("hello")["Status"] == "succeeded"
        tag = srv.server.runner.image_tag("hello", srv.server.projects.fingerprint("hello"))
        label = docker_cli("image", "inspect", "--format",
                       f'{{{{index .Config.Labels "{INSTANCE_LABEL}"}}}}', tag).stdout.strip()
        assert label == srv.server.runner.instance
        tags.append(tag)
    assert tags[0] != tags[1]
    assert docker_cli("rmi", "-f", tags[0]).returncode == 0  # another process removes one's image
    other = second.build("hello", params={"n": "2"})["ContainerStdouterr"]
    assert "mistryd: using image" in other and "removed outside" not in other


def test_rebuild_command_prunes_only_this_servers_dangling_images(tmp_path, our_images,
                                                                  docker_engine):
    mine = make_runner(tmp_path, "mine", our_images)
    theirs = make_runner(tmp_path, "theirs", our_images)
    fresh_projects(mine.config.projects_path, "hello")
    context = fresh_projects(tmp_path / "p", "hello") / "hello"
    log = LiveLog()
    my_old = mine.build_image("hello", context, mine.image_tag("hello", "old"), log)
    their_tag = theirs.image_tag("hello", "old")
    their_dangling = theirs.build_image("hello", context, their_tag, log, nocache=True)
    theirs.build_image("hello", context, their_tag, log, nocache=True)  # leaves one dangling
    my_tag = mine.image_tag("hello", "old")
    mine.build_image("hello", context, my_tag, log, nocache=True)  # leaves mine dangling

    config = tmp_path / "mine.json"
    config.write_text(json.dumps({"projects_path": str(mine.config.projects_path),
                                  "build_path": str(mine.config.build_path)}))
    result = CliRunner().invoke(main, ["rebuild", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert docker_cli("image", "inspect", my_old).returncode != 0  # pruned
    assert docker_cli("image", "inspect", their_dangling).returncode == 0  # another server's: kept


# --- through the server: cancel, and no worker held by a job waiting for another's image ------


def test_cancel_during_the_image_build_ends_the_job_at_once(start_server, tmp_path, our_images):
    projects = fresh_projects(tmp_path / "cancel-projects", SLEEPER)
    srv = start_server(projects_path=projects)
    our_images(srv.server.runner.instance)
    build_id = srv.post_job({"project": SLEEPER}, asynchronous=True).json()["id"]
    flight = srv.server.scheduler.in_flight(SLEEPER, build_id)
    wait_for_text(flight.job.log, "image build sleeping")
    # before, this call hung 60 s and answered 409; the RUN step sleeps 600 s
    r = requests.post(f"{srv.url}/jobs/{SLEEPER}/{build_id}/cancel", timeout=120)
    assert r.status_code == 200 and r.json()["Status"] == "cancelled", r.text
    log = r.json()["ContainerStdouterr"]
    our_images.steps_of(log)
    assert_container_gone(running_in(log))


def test_a_job_waiting_for_another_jobs_image_holds_no_worker(start_server, tmp_path,
                                                                our_images):
    """Two jobs need the same (slow) image, the second waits for the first's image build:
    with two workers, a third job of another project still runs at once."""
    projects = fresh_projects(tmp_path / "park-projects", SLEEPER, "hello")
    srv = start_server(projects_path=projects, job_concurrency=2)
    our_images(srv.server.runner.instance)
    first = srv.post_job({"project": SLEEPER, "params": {"n": "1"}}, asynchronous=True).json()
    wait_for_text(srv.server.scheduler.in_flight(SLEEPER, first["id"]).job.log,
                  "image build sleeping")
    second = srv.post_job({"project": SLEEPER, "params": {"n": "2"}}, asynchronous=True).json()
    other = srv.post_job({"project": "hello"}, timeout=120)  # would wait for a worker for ever
    assert other.status_code == 201 and other.json()["Status"] == "succeeded", other.text
    for job in (first, second):
        r = requests.post(f"{srv.url}/jobs/{SLEEPER}/{job['id']}/cancel", timeout=60)
        assert r.status_code == 200, r.text
        our_images.steps_of(r.json()["ContainerStdouterr"])
