"""8. Memory: the server's RSS idle (started, one build done) and right after the load of (2)
(cached `POST /jobs` from 8 clients for 10 s), against a bare Python that imports what mistryd
imports."""

from __future__ import annotations

import sys
import time

from . import load
from .harness import Env, sh
from .stats import Row, Summary

MEASUREMENT = "8 memory"
MAX_MB = 100.0
IMPORTS = ("import mistryd.cli, mistryd.server, mistryd.web, mistryd.web.http, docker, flask, "
           "waitress, prometheus_client")


def samples(srv, n: int = 5) -> list[float]:
    out = []
    for _ in range(n):
        out.append(srv.rss_mb())
        time.sleep(0.1)
    return out


def import_floor() -> float:
    code = (f"{IMPORTS}\nfor l in open('/proc/self/status'):\n"
            "    if l.startswith('VmRSS:'): print(int(l.split()[1]) / 1024)")
    return float(sh([sys.executable, "-c", code]).stdout.strip())


def run(env: Env) -> list[Row]:
    floor = Summary.of([import_floor() for _ in range(3)])
    srv = env.server({"hit": 0}, "memory")
    srv.build("hit")
    idle = Summary.of(samples(srv))
    seconds = env.scale.size(10, 1)
    load.cached_job(srv.port, "hit", seconds)
    loaded = Summary.of(samples(srv))
    target = f"< {MAX_MB:g} MB"
    return [
        Row(MEASUREMENT, "server RSS idle (after one build)", "MB", idle,
            "python importing mistryd's modules", floor, target, idle.max < MAX_MB),
        Row(MEASUREMENT, f"server RSS after {seconds} s of 8-client hit load", "MB", loaded,
            "the same server idle", idle, target, loaded.max < MAX_MB,
            note="upstream: 14 MB idle, 20 MB after load"),
    ]
