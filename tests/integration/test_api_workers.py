"""The HTTP API in several processes (config `http_workers`) beside the builder processes, all
under one `mistryd` command: a build started through one API process is joined, followed and
waited for through another; reloading the API processes (SIGHUP) or losing one never touches a
running build.

Which process answers a new connection is the kernel's choice; to make it ours, the tests stop
(SIGSTOP) every API process but the one they want: a stopped process accepts nothing."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import pytest
import requests
from support import children_of, make_setup, wait_for

pytestmark = pytest.mark.docker

TIMEOUT = 30


def apis_of(server_pid: int) -> list[int]:
    return sorted(children_of(server_pid, "mistryd-api"))


@contextmanager
def only(pid: int, others: list[int]):
    """New connections reach `pid` only, while this lasts."""
    for other in others:
        if other != pid:
            os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            if other != pid:
                os.kill(other, signal.SIGCONT)


def follow(url: str, project: str, build_id: str) -> tuple[list[str], str]:
    """The log lines of an SSE stream and the end event's data."""
    lines, end = [], ""
    with requests.get(f"{url}/log/{project}/{build_id}", stream=True, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.text
        event = ""
        for raw in r.iter_lines():
            line = raw.decode()
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                if event == "end":
                    end = line[6:]
                    break
                lines.append(line[6:])
            elif not line:
                event = ""
    return lines, end


@pytest.fixture
def ticker_server(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("web-ticker", "hello"), job_concurrency=2, http_workers=2)
    proc = setup.start()
    try:
        wait_for(lambda: len(apis_of(proc.pid)) == 2, timeout=30)
        yield setup, proc
    finally:
        for pid in apis_of(proc.pid):
            os.kill(pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    assert apis_of(proc.pid) == [] and children_of(proc.pid, "mistryd-builder") == []


def test_a_build_started_in_one_api_process_is_joined_followed_and_listed_in_another(
        ticker_server):
    setup, proc = ticker_server
    first, second = apis_of(proc.pid)
    with only(first, [first, second]):
        started = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                                timeout=TIMEOUT)
    assert started.status_code == 201, started.text
    build_id = started.json()["id"]
    answer: dict = {}
    with only(second, [first, second]):
        def wait_in_second() -> None:  # a synchronous waiter, in the other process
            r = requests.post(f"{setup.url}/jobs", json={"project": "web-ticker"}, timeout=120)
            answer.update(status=r.status_code, body=r.json())

        waiter = threading.Thread(target=wait_in_second)
        waiter.start()
        wait_for(lambda: requests.get(f"{setup.url}/job/web-ticker/{build_id}", timeout=TIMEOUT,
                                      headers={"Accept": "application/json"}
                                      ).json()["Status"] == "running", timeout=60)
        page = requests.get(f"{setup.url}/", timeout=TIMEOUT).text
        assert build_id in page and 'id="count-running">1<' in page
        lines, end = follow(setup.url, "web-ticker", build_id)
        waiter.join(120)
    assert [line for line in lines if line.startswith("tick ")] == \
        [f"tick {i}" for i in range(1, 7)]
    assert '"succeeded"' in end
    assert answer["status"] == 201 and answer["body"]["ID"] == build_id
    assert answer["body"]["Status"] == "succeeded" and answer["body"]["Coalesced"] is True
    metrics = requests.get(f"{setup.url}/metrics", timeout=TIMEOUT).text
    assert 'mistry_builds_started{project="web-ticker"} 1.0' in metrics
    assert 'mistry_builds_coalesced{project="web-ticker"} 1.0' in metrics


def test_a_cancel_through_another_api_process_stops_the_build(ticker_server):
    setup, proc = ticker_server
    first, second = apis_of(proc.pid)
    with only(first, [first, second]):
        build_id = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                                 timeout=TIMEOUT).json()["id"]
    wait_for(lambda: "tick 1" in requests.get(
        f"{setup.url}/job/web-ticker/{build_id}/out.log", timeout=TIMEOUT).text, timeout=60)
    with only(second, [first, second]):
        r = requests.post(f"{setup.url}/jobs/web-ticker/{build_id}/cancel", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["Status"] == "cancelled"


def test_reloading_the_api_processes_never_touches_a_running_build(ticker_server):
    setup, proc = ticker_server
    before = apis_of(proc.pid)
    builders = children_of(proc.pid, "mistryd-builder")
    requests.post(f"{setup.url}/jobs", json={"project": "hello"}, timeout=120)  # to hit later
    answer: dict = {}

    def wait_for_the_build() -> None:  # waits in an API process that is about to be replaced
        r = requests.post(f"{setup.url}/jobs", json={"project": "web-ticker"}, timeout=120)
        answer.update(status=r.status_code, body=r.json())

    waiter = threading.Thread(target=wait_for_the_build)
    waiter.start()
    wait_for(lambda: "tick 2" in _running_log(setup), timeout=60)
    proc.send_signal(signal.SIGHUP)
    failures, hits = [], 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # hits are answered all through the reload
        try:
            r = requests.post(f"{setup.url}/jobs", json={"project": "hello"}, timeout=TIMEOUT)
            hits += r.status_code == 201
        except requests.ConnectionError as e:
            failures.append(e)
    assert failures == [] and hits > 10
    new = set(apis_of(proc.pid)) - set(before)
    assert len(new) == 2  # the old one holding the waiter drains: it answers it, then ends
    waiter.join(120)
    assert answer["status"] == 201 and answer["body"]["Status"] == "succeeded"
    wait_for(lambda: set(apis_of(proc.pid)) == new, timeout=10)
    assert children_of(proc.pid, "mistryd-builder") == builders  # the builder lived on
    metrics = requests.get(f"{setup.url}/metrics", timeout=TIMEOUT).text
    assert 'mistry_builds_started{project="web-ticker"} 1.0' in metrics  # built once
    log = (setup.config.parent / "mistryd.log").read_text()
    assert "reloading the API processes" in log and "ended unexpectedly" not in log


def test_a_killed_api_process_is_replaced_and_builds_go_on(ticker_server):
    setup, proc = ticker_server
    build_id = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                             timeout=TIMEOUT).json()["id"]
    victim = apis_of(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(apis_of(proc.pid)) == 2 and victim not in apis_of(proc.pid),
             timeout=30)
    lines, end = follow(setup.url, "web-ticker", build_id)
    assert "tick 6" in lines and '"succeeded"' in end
    log = (setup.config.parent / "mistryd.log").read_text()
    assert f"api process {victim} ended unexpectedly (signal SIGKILL); a new one starts" in log


def _running_log(setup) -> str:
    for path in (setup.builds / "web-ticker" / "pending").glob("*/out.log"):
        try:
            return path.read_text()
        except OSError:
            pass
    return ""


def test_the_bound_on_long_requests_holds_for_the_whole_server(tmp_path, docker_engine):
    # 16 request threads in each API process: 8 long requests at once in the whole server
    setup = make_setup(tmp_path, ("sleeper", "hello"), http_workers=2, http_threads=16)
    proc = setup.start()
    streams: list[requests.Response] = []
    try:
        wait_for(lambda: len(apis_of(proc.pid)) == 2, timeout=30)
        first, second = apis_of(proc.pid)
        requests.post(f"{setup.url}/jobs", json={"project": "hello"}, timeout=120)
        build_id = requests.post(f"{setup.url}/jobs?async", timeout=TIMEOUT, json={
            "project": "sleeper", "params": {"sleep": "300"}}).json()["id"]
        for pid in (first, second):
            with only(pid, [first, second]):
                for _ in range(4):  # followers in both processes: 8 in all
                    r = requests.get(f"{setup.url}/log/sleeper/{build_id}", stream=True,
                                     timeout=TIMEOUT)
                    assert r.status_code == 200, r.text
                    streams.append(r)
        for pid in (first, second):  # either process refuses the ninth, and answers hits
            with only(pid, [first, second]):
                refused = requests.get(f"{setup.url}/log/sleeper/{build_id}", timeout=TIMEOUT)
                assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
                assert "following logs (8 at once)" in refused.json()["error"]
                hit = requests.post(f"{setup.url}/jobs", json={"project": "hello"},
                                    timeout=TIMEOUT)
                assert hit.status_code == 201 and hit.json()["Cached"] is True
        streams.pop().close()  # one follower leaves: its slot is free, wherever it was
        wait_for(lambda: requests.get(f"{setup.url}/log/sleeper/{build_id}", stream=True,
                                      timeout=TIMEOUT).status_code == 200, timeout=10)
        metrics = requests.get(f"{setup.url}/metrics", timeout=TIMEOUT).text
        assert 'mistryd_request_slots{kind="waits"} 8.0' in metrics  # the whole server's
    finally:
        for r in streams:
            r.close()
        requests.delete(f"{setup.url}/jobs/sleeper/{build_id}", timeout=TIMEOUT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
