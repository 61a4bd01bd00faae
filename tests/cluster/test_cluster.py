"""A central server and builders on other "machines" (separate processes with separate build
paths, each its own `mistryd worker`), one real redis-server between them: work spreads, identical
requests build once, labels, cache locality across builders, kill -9 of a builder mid-build, a
Redis restart, cancel, a timeout and a live log from a remote build (issue 14)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from support import (
    ADMIN,
    BUILD,
    BUILDER,
    CLUSTER_TOKENS,
    RedisServer,
    Setup,
    bearer,
    copy_project,
    make_setup,
    wait_for,
)

from mistryd.docker_runner import INSTANCE_LABEL, instance_id

TIMEOUT = 6  # builder_timeout: how long a silent builder has until it counts as lost

pytestmark = pytest.mark.docker


@dataclass
class Cluster:
    root: Path
    url: str
    redis: RedisServer
    central: subprocess.Popen
    setup: Setup
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(self, name: str, *labels: str) -> subprocess.Popen:
        path = self.root / f"builder-{name}"
        log = open(self.root / f"worker-{name}.log", "ab")  # noqa: SIM115 - the child owns it
        args = [sys.executable, "-m", "mistryd.cli", "worker", "--queue", self.redis.url,
                "--server", self.url, "--build-path", str(path), "--concurrency", "1",
                "--name", name, "--token", BUILDER, "--grace", "5"]
        for label in labels:
            args += ["--label", label]
        proc = subprocess.Popen(args, stdout=log, stderr=log)
        self.workers[name] = proc
        wait_for(lambda: self.builders().get(name, {}).get("state") in ("idle", "busy"),
                 timeout=60)
        return proc

    def stop_worker(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(sig)
        proc.wait(60)

    def builders(self) -> dict[str, dict]:
        stats = requests.get(f"{self.url}/api/queue/stats", headers=bearer(ADMIN), timeout=10)
        stats.raise_for_status()
        return {b["name"]: b for b in stats.json()["builders"]}

    def build(self, project: str, params: dict | None = None, group: str = "",
              wait: bool = True) -> dict:
        r = requests.post(f"{self.url}/jobs" + ("" if wait else "?async"), headers=bearer(BUILD),
                          json={"project": project, "params": params or {}, "group": group},
                          timeout=300)
        assert r.status_code in (200, 201, 202), r.text
        answer = r.json()
        return answer if wait else {"ID": answer["id"], **answer}

    def info(self, project: str, build_id: str) -> dict:
        r = requests.get(f"{self.url}/job/{project}/{build_id}",
                         headers={**bearer(ADMIN), "Accept": "application/json"}, timeout=10)
        r.raise_for_status()
        return r.json()

    def finished(self, project: str, build_id: str, timeout: float = 120) -> dict:
        seen: list[dict] = []

        def ended() -> bool:
            seen.append(self.info(project, build_id))
            return seen[-1].get("Status") not in ("queued", "running")
        wait_for(ended, timeout=timeout)
        return {**(seen[-1].get("BuildInfo") or {}), "Status": seen[-1]["Status"]}

    def running_on(self, project: str, build_id: str) -> str | None:
        r = requests.get(f"{self.url}/api/queue/jobs", headers=bearer(ADMIN), timeout=10)
        for job in r.json()["jobs"]:
            if (job["project"], job["id"]) == (project, build_id) and job["status"] == "running":
                return job["builder"]
        return None


def _containers(build_path: Path) -> list[str]:
    """The containers of the builder with this build path (running or not)."""
    out = subprocess.run(["docker", "ps", "-aq", "--filter",
                          f"label={INSTANCE_LABEL}={instance_id(build_path)}"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.fixture
def cluster(tmp_path, docker_engine):
    redis = RedisServer(tmp_path / "redis")
    (tmp_path / "central").mkdir()
    setup = make_setup(tmp_path / "central", ("sleeper", "cache", "failing"),
                       queue=redis.url, job_concurrency=0, builder_processes=1, http_workers=2,
                       builder_timeout=TIMEOUT, tokens=CLUSTER_TOKENS, builder_name="central")
    config = json.loads(setup.config.read_text())  # per-project keys: `projects` names the copies
    copy_project(setup.projects, "deploy", "sleeper")  # chaotic-manager style: newest wins
    config["projects"] = {"failing": {"labels": ["big"]}, "sleeper": {"build_timeout": 20},
                          "deploy": {"duplicates": "supersede"}}
    setup.config.write_text(json.dumps(config))
    central = setup.start()
    c = Cluster(tmp_path, f"http://127.0.0.1:{setup.port}", redis, central, setup)
    try:
        yield c
    finally:
        for name in list(c.workers):
            c.stop_worker(name, signal.SIGKILL)
        for path in tmp_path.glob("builder-*"):  # what killed builders left running
            if ids := _containers(path):
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        central = c.central  # (a test may have restarted it)
        central.send_signal(signal.SIGTERM)
        try:
            central.wait(60)
        except subprocess.TimeoutExpired:
            central.kill()
        redis.stop()
        for log in sorted(tmp_path.glob("**/*.log")):
            if log.name.startswith(("worker-", "mistryd")):
                print(f"--- {log}\n{log.read_text()[-4000:]}")


def test_work_spreads_over_builders_and_identical_requests_build_once(cluster):
    for name in ("b1", "b2", "b3"):
        cluster.start_worker(name)
    results: list[dict] = []

    def build(i: int) -> None:
        results.append(cluster.build("sleeper", {"sleep": "2", "n": str(i)}))

    threads = [threading.Thread(target=build, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r["Status"] for r in results} == {"succeeded"}
    assert len({r["Builder"] for r in results}) >= 2, [r["Builder"] for r in results]
    assert {r["Builder"] for r in results} <= {"b1", "b2", "b3"}

    same: list[dict] = []
    threads = [threading.Thread(target=lambda: same.append(
        cluster.build("sleeper", {"sleep": "2", "same": "1"}))) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(same) == 20 and len({r["ID"] for r in same}) == 1
    assert len({r["StartedAt"] for r in same}) == 1  # one build, every waiter its outcome
    assert sum(not r["Coalesced"] and not r["Cached"] for r in same) == 1
    # served by the central server, artifacts included
    one = same[0]
    got = requests.get(f"{cluster.url}/artifacts/sleeper/{one['ID']}/done",
                       headers=bearer(ADMIN), timeout=10)
    assert got.status_code == 200 and got.text == "done\n"
    page = requests.get(f"{cluster.url}/job/sleeper/{one['ID']}", headers=bearer(ADMIN), timeout=10)
    assert f'<dd id="builder">{one["Builder"]}</dd>' in page.text  # the build page says who
    history = requests.get(f"{cluster.url}/builds", headers=bearer(ADMIN), timeout=10)
    assert f'<td data-label="builder">{one["Builder"]}</td>' in history.text
    metrics = requests.get(f"{cluster.url}/metrics", headers=bearer(ADMIN), timeout=10).text
    states = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("mistryd_builders{")}
    assert states["idle"] + states["busy"] == 3 and states["lost"] == 0, states
    assert f'mistryd_builds_by_builder_total{{builder="{one["Builder"]}"}}' in metrics
    assert "mistryd_upload_bytes_total" in metrics


def test_labels_choose_the_builder(cluster):
    cluster.start_worker("plain")
    queued = cluster.build("failing", {"n": "1"}, wait=False)  # needs a builder labelled big
    time.sleep(3)
    assert cluster.info("failing", queued["ID"])["Status"] == "queued"
    cluster.start_worker("large", "big", "ssd")
    info = cluster.finished("failing", queued["ID"])
    assert info["Builder"] == "large" and info["Status"] == "failed"


def test_a_group_cache_follows_its_builds_across_builders(cluster):
    cluster.start_worker("a")
    first = cluster.build("cache", {"v": "1"}, group="g")
    assert first["Builder"] == "a" and not first["Incremental"]
    cluster.start_worker("b")
    second = cluster.build("cache", {"v": "2"}, group="g")  # a holds the cache: a builds it
    assert second["Builder"] == "a" and second["Incremental"]
    cluster.stop_worker("a")
    third = cluster.build("cache", {"v": "3"}, group="g")  # b fetches the cache first
    assert third["Builder"] == "b" and third["Incremental"]
    count = requests.get(f"{cluster.url}/artifacts/cache/{third['ID']}/count",
                         headers=bearer(ADMIN), timeout=10)
    assert count.text.strip() == "3"


def test_a_builder_killed_mid_build_loses_nothing(cluster):
    cluster.start_worker("doomed")
    queued = cluster.build("sleeper", {"sleep": "6", "kill": "1"}, wait=False)
    wait_for(lambda: cluster.running_on("sleeper", queued["ID"]), timeout=60)
    cluster.start_worker("survivor")
    killed_at = time.monotonic()
    cluster.stop_worker("doomed", signal.SIGKILL)
    info = cluster.finished("sleeper", queued["ID"], timeout=120)
    assert info["Status"] == "succeeded" and info["Builder"] == "survivor"
    assert time.monotonic() - killed_at < TIMEOUT + 6 + 30  # noticed within builder_timeout
    stats = requests.get(f"{cluster.url}/api/queue/stats", headers=bearer(ADMIN), timeout=10)
    assert stats.json()["running"] == 0 and stats.json()["queued"] == 0
    lost = {b["name"]: b for b in stats.json()["builders"]}.get("doomed")
    assert lost is None or lost.get("state") == "lost"
    # it comes back: it cleans up after itself (its half-built folder, its container)
    assert list((cluster.root / "builder-doomed").glob("*/pending/*"))
    cluster.start_worker("doomed")
    assert not list((cluster.root / "builder-doomed").glob("*/pending/*"))
    assert _containers(cluster.root / "builder-doomed") == []


def test_a_redis_restart_loses_no_queued_job(cluster):
    queued = [cluster.build("sleeper", {"sleep": "1", "r": str(i)}, wait=False) for i in range(3)]
    cluster.redis.restart(signal.SIGKILL)  # a crash: the append-only file has every job
    cluster.start_worker("after")
    for q in queued:
        assert cluster.finished("sleeper", q["ID"])["Status"] == "succeeded"


def test_cancel_timeout_and_live_log_of_a_remote_build(cluster):
    cluster.start_worker("w")
    queued = cluster.build("sleeper", {"sleep": "30"}, wait=False)
    wait_for(lambda: cluster.running_on("sleeper", queued["ID"]), timeout=60)
    lines = []
    with requests.get(f"{cluster.url}/log/sleeper/{queued['ID']}", headers=bearer(ADMIN),
                      stream=True, timeout=60) as log:
        for raw in log.iter_lines(decode_unicode=True):
            lines.append(raw)
            if "sleeping 30" in raw:
                break
    assert any("sleeping 30" in line for line in lines)  # while it runs, through the central
    # a build longer than the project's build_timeout (20 s) on the remote builder: timed out
    timed = cluster.build("sleeper", {"sleep": "25", "t": "1"}, wait=False)
    r = requests.post(f"{cluster.url}/jobs/sleeper/{queued['ID']}/cancel", headers=bearer(ADMIN),
                      timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["Status"] == "cancelled"
    info = cluster.finished("sleeper", timed["ID"], timeout=120)
    assert info["Status"] == "timed-out" and info["Builder"] == "w"


def test_the_builder_role_only_builds(cluster):
    r = requests.post(f"{cluster.url}/jobs", headers=bearer(BUILDER), json={"project": "sleeper"},
                      timeout=10)
    assert r.status_code == 403
    r = requests.get(f"{cluster.url}/index/", headers=bearer(BUILDER), timeout=10)
    assert r.status_code == 403


def test_a_worker_refuses_bad_options(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mistryd.cli", "worker", "--queue", "http://x",
                          "--server", "http://127.0.0.1:1", "--build-path", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--queue" in out.stderr
    out = subprocess.run([sys.executable, "-m", "mistryd.cli", "worker", "--queue",
                          "redis://127.0.0.1:1/0", "--server", "http://127.0.0.1:1",
                          "--build-path", str(tmp_path), "--name", "a b"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--name" in out.stderr


def test_a_central_server_restart_loses_no_remote_build(cluster):
    cluster.start_worker("steady")
    queued = cluster.build("sleeper", {"sleep": "8", "restart": "1"}, wait=False)
    wait_for(lambda: cluster.running_on("sleeper", queued["ID"]), timeout=60)
    cluster.central.send_signal(signal.SIGTERM)
    cluster.central.wait(60)
    time.sleep(2)  # the builder's log pieces meanwhile are refused: it tries again
    cluster.central = cluster.setup.start()
    info = cluster.finished("sleeper", queued["ID"], timeout=120)
    assert info["Status"] == "succeeded" and info["Builder"] == "steady"
    log = requests.get(f"{cluster.url}/job/sleeper/{queued['ID']}/out.log",
                       headers=bearer(ADMIN), timeout=10)
    assert "sleeping 8" in log.text and "slept" in log.text


def test_a_newer_request_supersedes_a_remote_build(cluster):
    cluster.start_worker("w")
    older = cluster.build("deploy", {"sleep": "30", "rev": "1"}, group="prod", wait=False)
    wait_for(lambda: cluster.running_on("deploy", older["ID"]), timeout=60)
    newer = cluster.build("deploy", {"sleep": "1", "rev": "2"}, group="prod")
    assert newer["Status"] == "succeeded"
    info = cluster.finished("deploy", older["ID"], timeout=60)
    assert info["Status"] == "superseded" and info["ErrBuild"] == f"superseded by {newer['ID']}"
