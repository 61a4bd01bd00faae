"""Issue 14: throughput of distinct builds with builders on other machines. A central server
that builds nothing itself (`job_concurrency` 0) on a real redis-server, and 1 then 3
`mistryd worker`s (one build at a time each, their own build paths): the wall time of 24
distinct 2-second builds submitted at once. Target: 3 builders >= 2.5x the throughput of 1."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from .harness import BIN, Env, HttpClient, free_port, nonce
from .stats import Row, Summary

MEASUREMENT = "14 builders"
TARGET = 2.5


class Redis:
    def __init__(self, folder: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(folder), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _workers(env: Env, n: int, redis: Redis, url: str, home: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        log = open(home / f"worker-{i}.log", "wb")  # noqa: SIM115 - the child owns it
        procs.append(subprocess.Popen(
            [str(BIN / "mistryd"), "worker", "--queue", redis.url, "--server", url,
             "--build-path", str(home / f"builder-{i}"), "--concurrency", "1",
             "--name", f"bench-{i}"], stdout=log, stderr=subprocess.STDOUT))
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_builders(client: HttpClient, n: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = json.loads(client.get("/api/queue/stats", accept="application/json"))
        if len([b for b in stats["builders"] if b["name"].startswith("bench-")]) >= n:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{n} builders did not show up in 60 s")


def _batch(client: HttpClient, jobs: int, sleep: int) -> float:
    """Seconds from submitting `jobs` distinct builds (async) to the last one's end."""
    started = time.monotonic()
    ids = []
    for _ in range(jobs):
        status, data = client.request(
            "POST", "/jobs?async", json.dumps({"project": "sleeper", "params": {
                "sleep": str(sleep), "n": nonce()}}).encode(),
            {"Content-Type": "application/json"})
        if status not in (201, 202):
            raise RuntimeError(f"POST /jobs: {status} {data[:300]!r}")
        ids.append(json.loads(data)["id"])
    for build_id in ids:
        while True:
            info = json.loads(client.get(f"/job/sleeper/{build_id}", accept="application/json"))
            if info["Status"] not in ("queued", "running"):
                if info["Status"] != "succeeded":
                    reason = (info.get("BuildInfo") or {}).get("ErrBuild")
                    raise RuntimeError(f"build {build_id} {info['Status']}: {reason}")
                break
            time.sleep(0.1)
    return time.monotonic() - started


def run(env: Env) -> list[Row]:
    jobs = env.scale.size(24, 3)
    sleep = env.scale.size(2, 1)
    redis = Redis(env.dir("redis"))
    env.stack.callback(redis.stop)
    srv = env.server({"sleeper": 0}, "builders", queue=redis.url, job_concurrency=0,
                     job_backlog=1000)
    client = srv.client()
    home = env.dir("workers")
    rates: dict[int, list[float]] = {}
    for n in (1, 3):
        procs = _workers(env, n, redis, srv.url, home)
        try:
            _wait_builders(client, n)
            _batch(client, n, sleep)  # each builder one: every one has the image and context
            rates[n] = [jobs / _batch(client, jobs, sleep) for _ in range(env.scale.reps(2, 1))]
        except Exception:
            print("\n".join(p.read_text()[-2000:] for p in home.glob("worker-*.log")),
                  file=sys.stderr)
            raise
        finally:
            _stop(procs)
    one, three = Summary.of(rates[1]), Summary.of(rates[3])
    row = Row(MEASUREMENT, f"{jobs} distinct {sleep} s builds, 3 builders", "builds/s", three,
              "1 builder", one, f">= {TARGET:g}x", None)
    row.met = row.ratio >= TARGET
    return [row]
