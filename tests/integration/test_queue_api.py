"""The queue as JSON and the builders on the pages (docs/distributed.md, "Builders and the queue
endpoints"): GET /api/queue/stats and /api/queue/jobs while builds run, `Builder` in BuildInfo,
on the build page and in the history, the builders' registry of one machine's builder processes
(a dead one leaves the list, its job is delivered again and counted). Real Docker, a real HTTP
server, the real `mistryd` command for the builder processes."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
import requests
from support import READ, TOKENS, bearer, children_of, make_setup, wait_for

from mistryd.remote.registry import BuilderState, FileRegistry

pytestmark = pytest.mark.docker

TIMEOUT = 30
FINISHED = {"succeeded", "failed", "cancelled", "superseded", "timed-out", "abandoned"}


def get(url: str, path: str, **kw) -> requests.Response:
    r = requests.get(f"{url}{path}", timeout=TIMEOUT, **kw)
    assert r.status_code == 200, r.text
    return r


def submit(url: str, params: dict) -> str:
    r = requests.post(f"{url}/jobs?async", json={"project": "sleeper", "params": params},
                      timeout=TIMEOUT)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_stats_and_jobs_while_builds_run_and_the_builder_on_every_page(start_server, build_root):
    # an earlier run's builder process left its announcement: a dead process, not a lost builder
    FileRegistry(build_root / ".mistryd" / "builders").announce(
        BuilderState("builder-99999", (), 1, 2, time.time() - 3600))
    srv = start_server(projects=("sleeper",), job_concurrency=1, job_backlog=10,
                       builder_name="central-1")
    running = submit(srv.url, {"sleep": "60"})
    wait_for(lambda: srv.server.queue.stats().running == 1, timeout=60)
    queued = [submit(srv.url, {"sleep": "60", "n": str(n)}) for n in (2, 3)]
    before = time.time()
    # the builder announces what it runs every 2 s
    wait_for(lambda: [b["state"] for b in get(srv.url, "/api/queue/stats").json()["builders"]]
             == ["busy"], timeout=10)

    stats = get(srv.url, "/api/queue/stats").json()
    assert (stats["queued"], stats["running"]) == (2, 1)
    assert set(stats["finished"]) == FINISHED and not any(stats["finished"].values())
    [me] = stats["builders"]  # the dead process's entry went at the start
    assert me.pop("last_seen") > before - 2
    assert me == {"name": "mistryd", "labels": [], "running": 1, "capacity": 1,
                  "state": "busy"}

    jobs = get(srv.url, "/api/queue/jobs").json()["jobs"]
    assert [(j["id"], j["status"], j["builder"], j["position"]) for j in jobs] == [
        (running, "running", "mistryd", None), (queued[0], "queued", None, 0),
        (queued[1], "queued", None, 1)]
    assert all(j["project"] == "sleeper" and j["url"] == f"job/sleeper/{j['id']}" for j in jobs)
    assert jobs[0]["started_at"] >= jobs[0]["queued_at"] > 0
    assert jobs[1]["started_at"] is None and jobs[2]["queued_at"] >= jobs[1]["queued_at"]

    metrics = get(srv.url, "/metrics").text
    assert metric(metrics, 'mistryd_builders{state="busy"}') == 1.0
    assert metric(metrics, 'mistryd_builders{state="lost"}') == 0.0
    dashboard = get(srv.url, "/").text
    assert '<td data-label="builder">mistryd</td>' in dashboard  # the running one's builder
    assert 'id="builders"' not in dashboard  # one builder: no table of builders

    for build_id in (*queued, running):
        assert requests.delete(f"{srv.url}/jobs/sleeper/{build_id}",
                               timeout=TIMEOUT).status_code == 200
    wait_for(lambda: get(srv.url, "/api/queue/stats").json()["running"] == 0, timeout=60)
    wait_for(lambda: [b["state"] for b in get(srv.url, "/api/queue/stats").json()["builders"]]
             == ["idle"], timeout=10)
    done = get(srv.url, "/api/queue/stats").json()
    assert (done["queued"], done["finished"]["cancelled"]) == (0, 3)
    assert get(srv.url, "/api/queue/jobs").json() == {"jobs": []}

    # a build records its builder: the server's name, shown on its page and in the history
    r = srv.post_job({"project": "sleeper", "params": {"sleep": "0"}})
    info = r.json()
    assert info["Status"] == "succeeded" and info["Builder"] == "central-1"
    page = get(srv.url, f"/job/sleeper/{info['ID']}").text
    assert '<dd id="builder">central-1</dd>' in page
    for history in ("/builds", "/project/sleeper", "/"):
        assert '<td data-label="builder">central-1</td>' in get(srv.url, history).text, history
    # the history filtered by builder: the builds it ran, not those that never started
    mine = get(srv.url, "/builds", params={"builder": "central-1"}).text
    assert info["ID"][:12] in mine and running[:12] in mine and queued[0][:12] not in mine
    assert 'name="builder" value="central-1"' in mine
    elsewhere = get(srv.url, "/builds", params={"builder": "elsewhere"}).text
    assert "No builds match these filters." in elsewhere
    metrics = get(srv.url, "/metrics").text
    # this one and the cancelled one that had started: both ended on this builder
    assert metric(metrics, 'mistryd_builds_by_builder_total{builder="central-1"}') == 2.0


def test_the_queue_endpoints_need_the_read_role(start_server):
    srv = start_server(tokens=TOKENS)
    for path in ("/api/queue/stats", "/api/queue/jobs"):
        assert requests.get(f"{srv.url}{path}", timeout=TIMEOUT).status_code == 401
        assert requests.get(f"{srv.url}{path}", headers=bearer("wrong-token-0123456789"),
                            timeout=TIMEOUT).status_code == 401
        r = get(srv.url, path, headers=bearer(READ))
        assert r.headers["Content-Type"] == "application/json"


def test_builder_processes_announce_and_a_dead_one_leaves_the_list(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("web-ticker",), job_concurrency=1, builder_processes=2)
    proc = setup.start()

    def children() -> set[str]:
        return {f"builder-{pid}" for pid in children_of(proc.pid, "mistryd-builder")}

    def listed() -> list[dict]:
        return get(setup.url, "/api/queue/stats").json()["builders"]

    try:
        wait_for(lambda: len(children()) == 2 and {b["name"] for b in listed()} == children(),
                 timeout=60)
        assert all(b["capacity"] == 1 and b["state"] == "idle" for b in listed())
        dashboard = get(setup.url, "/").text  # two builders: the dashboard lists them
        assert 'id="builders"' in dashboard
        for name in children():
            assert f"<code>{name}</code>" in dashboard

        build_id = requests.post(f"{setup.url}/jobs?async", json={"project": "web-ticker"},
                                 timeout=TIMEOUT).json()["id"]
        wait_for(lambda: [j["builder"] for j in get(setup.url, "/api/queue/jobs").json()["jobs"]
                          if j["id"] == build_id] in ([n] for n in children()), timeout=60)
        [holder] = [j["builder"] for j in get(setup.url, "/api/queue/jobs").json()["jobs"]]
        wait_for(lambda: {b["name"]: b["state"] for b in listed()}.get(holder) == "busy",
                 timeout=10)
        survivor = (children() - {holder}).pop()
        os.kill(int(holder.removeprefix("builder-")), signal.SIGKILL)

        # the dead process is off the list at once (not "lost" for builder_timeout); its
        # replacement announces itself; the job is delivered again, and counted
        wait_for(lambda: len(children()) == 2 and holder not in children(), timeout=30)
        wait_for(lambda: {b["name"] for b in listed()} == children(), timeout=30)
        assert survivor in children()
        metrics = get(setup.url, "/metrics").text
        assert metric(metrics, "mistryd_jobs_redelivered_total") == 1.0
        wait_for(lambda: get(setup.url, f"/job/web-ticker/{build_id}",
                             headers={"Accept": "application/json"}).json()["Status"]
                 == "succeeded", timeout=120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    # stopped cleanly: every builder process took itself off the list
    folder = setup.builds / ".mistryd" / "builders"
    assert [p.name for p in folder.iterdir()] == [], [json.loads(p.read_text())
                                                      for p in folder.iterdir()]
