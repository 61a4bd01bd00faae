"""8. Memory: the whole server's (supervisor, two API workers, one builder: `http_workers` = 2)
memory idle (started, one build done) and right after the load of (2) (cached `POST /jobs` from 8
clients for 10 s), against a bare Python that imports what mistryd imports. The processes are
forked from one that imported everything, so they share those pages: the figure is the sum of
their PSS (each shared page divided among its processes); the sum of their RSS is noted."""

from __future__ import annotations

import sys
import time

from . import load
from .harness import Env, process_tree, sh
from .stats import Row, Summary

MEASUREMENT = "8 memory"
MAX_MB = 150.0  # issue 12: the whole server, http_workers = 2
IMPORTS = ("import mistryd.cli, mistryd.server, mistryd.web, mistryd.web.http, docker, flask, "
           "waitress, prometheus_client")


def samples(srv, n: int = 5) -> tuple[list[float], float]:
    """PSS sums, and the largest RSS sum seen."""
    out, most_rss = [], 0.0
    for _ in range(n):
        pss, rss = srv.memory_mb()
        out.append(pss)
        most_rss = max(most_rss, rss)
        time.sleep(0.1)
    return out, most_rss


def import_floor() -> float:
    code = (f"{IMPORTS}\nfor l in open('/proc/self/status'):\n"
            "    if l.startswith('VmRSS:'): print(int(l.split()[1]) / 1024)")
    return float(sh([sys.executable, "-c", code]).stdout.strip())


def run(env: Env) -> list[Row]:
    floor = Summary.of([import_floor() for _ in range(3)])
    srv = env.server({"hit": 0}, "memory", http_workers=2, builder_processes=1)
    srv.build("hit")
    idle_pss, idle_rss = samples(srv)
    idle = Summary.of(idle_pss)
    seconds = env.scale.size(10, 1)
    load.cached_job(srv.port, "hit", seconds)
    loaded_pss, loaded_rss = samples(srv)
    loaded = Summary.of(loaded_pss)
    target = f"<= {MAX_MB:g} MB"
    processes = len(process_tree(srv.pid))
    return [
        Row(MEASUREMENT, f"server memory idle (after one build), {processes} processes, PSS",
            "MB", idle, "python importing mistryd's modules (RSS)", floor, target,
            idle.max <= MAX_MB, note=f"RSS summed over the processes: {idle_rss:.0f} MB"),
        Row(MEASUREMENT, f"server memory after {seconds} s of 8-client hit load, PSS", "MB",
            loaded, "the same server idle", idle, target, loaded.max <= MAX_MB,
            note=f"RSS summed: {loaded_rss:.0f} MB; upstream: 14 MB idle, 20 MB after load"),
    ]
