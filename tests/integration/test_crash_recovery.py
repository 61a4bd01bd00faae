"""kill -9 in the middle of work, then a restart: every accepted job ends well and nothing is
left behind. Runs the real `mistryd` command as a separate process."""

import json
import os
import signal

import docker
import pytest
import requests
from support import make_setup, wait_for

from mistryd.config import from_dict
from mistryd.docker_runner import INSTANCE_LABEL, DockerRunner

pytestmark = pytest.mark.docker  # real builds in mistryd processes


def job_state(url, build_id):
    r = requests.get(f"{url}/job/sleeper/{build_id}", headers={"Accept": "application/json"},
                     timeout=10)
    return r.json()


def test_kill_9_with_builds_running_and_queued_then_restart(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("sleeper",), job_concurrency=3, job_backlog=5)
    projects, builds, url = setup.projects, setup.builds, setup.url
    instance = DockerRunner(from_dict({"projects_path": str(projects),
                                       "build_path": str(builds)})).instance
    client = docker.from_env()
    mine = {"label": f"{INSTANCE_LABEL}={instance}", "status": "running"}
    proc = setup.start()
    ids = []
    try:
        for i in range(5):
            r = requests.post(f"{url}/jobs?async", timeout=10, json={
                "project": "sleeper", "params": {"sleep": "10" if i < 3 else "1", "n": str(i)}})
            assert r.status_code == 201
            ids.append(r.json()["id"])
        wait_for(lambda: [job_state(url, i)["Status"] for i in ids].count("running") == 3)
        wait_for(lambda: len(client.containers.list(filters=mine)) == 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(client.containers.list(filters=mine)) == 3  # orphans of the crash
    assert len(list((builds / "sleeper" / "pending").iterdir())) == 3

    # shorten the interrupted builds: same job ids, so the params must stay; the project
    # content decides the key, so it must stay too. Restart and let everything run again.
    proc = setup.start()
    try:
        # coalescing holds after the restart: a request for a re-queued job joins it
        joined = requests.post(f"{url}/jobs?async", timeout=10, json={
            "project": "sleeper", "params": {"sleep": "1", "n": "3"}})
        assert joined.status_code == 201 and joined.json()["id"] == ids[3]
        wait_for(lambda: all(job_state(url, i)["State"] == "ready" for i in ids), timeout=200)
        states = [job_state(url, i) for i in ids]
        assert [s["Status"] for s in states] == ["succeeded"] * 5
        assert not list((builds / "sleeper" / "pending").iterdir())
        assert client.containers.list(all=True, filters={"label": mine["label"]}) == []
        started = requests.get(f"{url}/metrics", timeout=10).text
        assert 'mistry_builds_started{project="sleeper"} 5.0' in started  # each ran once here
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert os.listdir(builds / "sleeper" / "ready") and len(os.listdir(builds / "sleeper" /
                                                                        "ready")) == 5


def test_sigterm_lets_running_builds_finish_and_keeps_queued_jobs(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("sleeper",), job_concurrency=1, shutdown_grace=60)
    url = setup.url
    proc = setup.start()
    running = requests.post(f"{url}/jobs?async", timeout=10, json={
        "project": "sleeper", "params": {"sleep": "3"}}).json()["id"]
    queued = requests.post(f"{url}/jobs?async", timeout=10, json={
        "project": "sleeper", "params": {"sleep": "0"}}).json()["id"]
    wait_for(lambda: job_state(url, running)["Status"] == "running")
    proc.send_signal(signal.SIGTERM)
    # while it drains, new work is refused but the running build is still answered
    wait_for(lambda: requests.post(f"{url}/jobs", timeout=10, json={
        "project": "sleeper", "params": {"sleep": "5"}}).status_code == 503, timeout=10)
    assert proc.wait(60) == 0
    info = json.loads((tmp_path / "builds" / "sleeper" / "ready" / running /
                       "build_info.json").read_text())
    assert info["Status"] == "succeeded"
    proc = setup.start()  # the queued job was kept and runs now
    try:
        wait_for(lambda: job_state(url, queued)["State"] == "ready", timeout=60)
        assert job_state(url, queued)["Status"] == "succeeded"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
