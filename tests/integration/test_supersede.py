"""`duplicates: supersede` (chaotic-manager's way, docs/distributed.md): a newer request for a
project and group cancels the older builds of that project and group in flight, queued or
running; they end `superseded` and their waiters are told. Real Docker, a real HTTP server."""

from __future__ import annotations

import threading

import pytest
import requests
from support import wait_for

pytestmark = pytest.mark.docker


def post(srv, params: dict, group: str = "g", wait: bool = False) -> dict:
    r = requests.post(f"{srv.url}/jobs" + ("" if wait else "?async"),
                      json={"project": "sleeper", "params": params, "group": group}, timeout=120)
    assert r.status_code == 201, r.text
    return r.json()


def status(srv, build_id: str) -> str:
    return requests.get(f"{srv.url}/job/sleeper/{build_id}",
                        headers={"Accept": "application/json"}, timeout=10).json()["Status"]


def test_a_newer_request_supersedes_the_running_and_the_queued_ones(start_server):
    srv = start_server(projects=("sleeper",), job_concurrency=1, job_backlog=10,
                       project_overrides={"sleeper": {"duplicates": "supersede"}})
    answers: list[dict] = []
    waiter = threading.Thread(target=lambda: answers.append(post(srv, {"sleep": "30"},
                                                                 wait=True)))
    waiter.start()
    wait_for(lambda: srv.server.queue.stats().running == 1, timeout=60)
    running = srv.server.queue.jobs()[0].key.id
    queued = post(srv, {"sleep": "30", "n": "2"})["id"]
    other_group = post(srv, {"sleep": "1"}, group="other")["id"]
    # the queued one superseded the running one; this one supersedes the queued one
    newest = post(srv, {"sleep": "1", "n": "3"})["id"]
    waiter.join(60)
    assert answers and answers[0]["Status"] == "superseded"  # the waiter was told
    assert answers[0]["ErrBuild"].startswith("superseded by ")
    wait_for(lambda: status(srv, newest) == "succeeded", timeout=120)
    assert status(srv, running) == "superseded"
    assert status(srv, queued) == "superseded"
    wait_for(lambda: status(srv, other_group) == "succeeded", timeout=60)  # untouched
    row = srv.server.store.get("sleeper", queued)
    assert row.reason == f"superseded by {newest}"


def test_coalesce_stays_the_default(start_server):
    srv = start_server(projects=("sleeper",), job_concurrency=2)
    first = post(srv, {"sleep": "2"})["id"]
    second = post(srv, {"sleep": "2", "n": "2"})["id"]
    wait_for(lambda: status(srv, first) == "succeeded" and status(srv, second) == "succeeded",
             timeout=120)
