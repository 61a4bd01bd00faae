"""Builds run in builder processes of their own (config `builder_processes`), supervised by the
`mistryd` command: the serving process answers, streams the live log and cancels across the
process boundary, and a builder that dies is replaced while its job runs again."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import requests
from support import children_of, make_setup, wait_for

pytestmark = pytest.mark.docker

TIMEOUT = 30


def builders_of(server_pid: int) -> list[int]:
    """The builder processes the server started."""
    return children_of(server_pid, "mistryd-builder")


def job(url: str, build_id: str, project: str = "web-ticker") -> dict:
    return requests.get(f"{url}/job/{project}/{build_id}", timeout=TIMEOUT,
                        headers={"Accept": "application/json"}).json()


def test_a_build_runs_in_a_builder_process_and_its_log_streams_live(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("web-ticker",), job_concurrency=1)
    proc = setup.start()
    try:
        wait_for(lambda: len(builders_of(proc.pid)) == 1, timeout=30)
        r = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                          timeout=TIMEOUT)
        build_id = r.json()["id"]
        seen: list[str] = []
        owners = set()
        status_at_first_tick = None
        with requests.get(f"{setup.url}/log/web-ticker/{build_id}", stream=True,
                          timeout=TIMEOUT) as stream:
            for raw in stream.iter_lines():
                line = raw.decode()
                if line.startswith("data: "):
                    seen.append(line[6:])
                    owners.add(_lease_owner(setup.builds, "web-ticker", build_id))
                    if line[6:] == "tick 1":
                        status_at_first_tick = job(setup.url, build_id)["Status"]
                if line == "event: end":
                    break
        # built by the builder process (its workers hold the lease), not the serving process
        builder = builders_of(proc.pid)[0]
        assert f"builder-{builder}-0" in owners
        assert [text for text in seen if text.startswith("tick ")] == \
            [f"tick {i}" for i in range(1, 7)]
        # the lines came while the build ran, not all at its end (it prints six over 6 s)
        assert status_at_first_tick == "running"
        info = job(setup.url, build_id)
        assert info["Status"] == "succeeded"
        metrics = requests.get(f"{setup.url}/metrics", timeout=TIMEOUT).text
        assert 'mistry_builds_started{project="web-ticker"} 1.0' in metrics  # counted there
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def _lease_owner(builds: Path, project: str, build_id: str) -> str | None:
    import sqlite3

    db = sqlite3.connect(builds / ".mistryd" / "index.sqlite")
    try:
        row = db.execute("SELECT lease_owner FROM builds WHERE project=? AND id=?",
                         (project, build_id)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def test_a_killed_builder_is_replaced_and_its_job_runs_again(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("web-ticker",), job_concurrency=1)
    proc = setup.start()
    try:
        wait_for(lambda: len(builders_of(proc.pid)) == 1, timeout=30)
        first_builder = builders_of(proc.pid)[0]
        build_id = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                                 timeout=TIMEOUT).json()["id"]
        answer: dict = {}

        def wait_for_the_build() -> None:  # a client waiting synchronously all along
            r = requests.post(f"{setup.url}/jobs", json={"project": "web-ticker"}, timeout=120)
            answer.update(status=r.status_code, body=r.json())

        waiter = threading.Thread(target=wait_for_the_build)
        waiter.start()

        def running() -> bool:
            return (_lease_owner(setup.builds, "web-ticker", build_id) or "").startswith(
                f"builder-{first_builder}-")

        wait_for(running, timeout=60)
        wait_for(lambda: "tick 2" in _pending_log(setup.builds, build_id), timeout=60)
        os.kill(first_builder, signal.SIGKILL)
        # a new builder takes the job again at once (not after the lease's 30 s)
        wait_for(lambda: builders_of(proc.pid) not in ([], [first_builder]), timeout=30)
        second_builder = builders_of(proc.pid)[0]
        wait_for(lambda: (_lease_owner(setup.builds, "web-ticker", build_id) or "").startswith(
            f"builder-{second_builder}-"), timeout=20)
        waiter.join(120)
        assert answer["status"] == 201, answer
        assert answer["body"]["Status"] == "succeeded" and answer["body"]["ID"] == build_id
        record = json.loads((setup.builds / "web-ticker" / "ready" / build_id /
                             "build_info.json").read_text())
        assert record["Status"] == "succeeded"
        out = (setup.builds / "web-ticker" / "ready" / build_id / "out.log").read_text()
        assert out.count("tick 6") == 1  # the log of the run that finished, whole
        log = (tmp_path / "mistryd.log").read_text()
        assert f"builder process {first_builder} ended unexpectedly (signal SIGKILL)" in log
        assert "queued again" in log
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert builders_of(proc.pid) == []


def _pending_log(builds: Path, build_id: str) -> str:
    try:
        return (builds / "web-ticker" / "pending" / build_id / "out.log").read_text()
    except OSError:
        return ""


def test_a_cancel_reaches_a_build_in_a_builder_process(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("web-ticker",), job_concurrency=1)
    proc = setup.start()
    try:
        build_id = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                                 timeout=TIMEOUT).json()["id"]
        wait_for(lambda: "tick 1" in _pending_log(setup.builds, build_id), timeout=60)
        r = requests.post(f"{setup.url}/jobs/web-ticker/{build_id}/cancel", timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.json()["Status"] == "cancelled"
        assert "tick 6" not in (setup.builds / "web-ticker" / "ready" / build_id /
                                "out.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
