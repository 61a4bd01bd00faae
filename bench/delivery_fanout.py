"""Issue 11, figure 3: twenty clients fetch the same cached 200 MiB build at once, `mistry build`
(http) against upstream's Go client over rsync, in turns; the wall time from the first start to
the last exit. Meanwhile one client asks for a small cache hit every 10 ms (the same for both
sides): its latency under the load, against the same hit on the idle server."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .delivery import Expected, Targets, builds_started, run_timed, settle, side_by_side
from .harness import BenchServer, Env
from .stats import Row, Summary, timed

WITHIN_UPSTREAM = 0.8
PROBE_EVERY = 0.01  # seconds between two hits: a steady trickle, not a load of its own
HIT = {"project": "hit"}


def run(env: Env) -> list[Row]:
    clients, mib = env.scale.size(20, 3), env.scale.size(200, 2)
    side = side_by_side(env, {"artifact": 0, "hit": 0}, "delivery-3")
    params = {"mib": str(mib)}
    expect = Expected(side.srv.artifacts(side.srv.build("artifact", params=params)))
    side.srv.build("hit")
    probe = side.srv.client()
    if not probe.post_job(HIT)["Cached"]:
        raise RuntimeError("the small build was not answered from cache")
    targets = Targets(env)
    commands = {"mistry": lambda t: side.mistry("artifact", params, t),
                "upstream": lambda t: side.upstream_rsync("artifact", params, t)}
    for command in commands.values():  # warm up: page cache, the server's manifest
        target = targets.new()
        run_timed(command(target))
        expect.check(target)
        shutil.rmtree(target)
    builds = builds_started(side.srv)

    idle = []
    for _ in range(env.scale.reps(200, 10)):
        idle.append(timed(lambda: probe.post_job(HIT)))
        time.sleep(PROBE_EVERY)
    walls: dict[str, list[float]] = {name: [] for name in commands}
    hits: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(env.scale.reps(3, 1)):
        for name, command in commands.items():
            wall, got = fan_out(side.srv, targets, clients, command, expect)
            walls[name].append(wall)
            hits[name] += got
    if builds_started(side.srv) != builds:
        raise RuntimeError("a fetch started a build: the figures are not of cache hits")

    total = Row("11.3 fan-out", f"{clients} x mistry build at once, cached {mib} MiB artifact, "
                "http, until the last is done", "ms", Summary.of(walls["mistry"]),
                f"{clients} x upstream's client, rsync", Summary.of(walls["upstream"]),
                f"<= {WITHIN_UPSTREAM}x upstream", None)
    total.met = total.ratio <= WITHIN_UPSTREAM
    under = Summary.of(hits["mistry"])
    theirs = Summary.of(hits["upstream"])
    latency = Row("11.3 fan-out", f"cache hit POST /jobs every 10 ms during the {clients} mistry "
                  "fetches", "ms", under, "the same hit, server idle", Summary.of(idle), "", None,
                  note=f"slowest {under.max:.1f} ms; during upstream's {clients} rsync fetches: "
                       f"median {theirs.median:.2f} ms, slowest {theirs.max:.1f} ms")
    return [total, latency]


def fan_out(srv: BenchServer, targets: Targets, clients: int,
            command: Callable[[Path], list[str]], expect: Expected) -> tuple[float, list[float]]:
    """Start `clients` fetches together, each into its own empty target; the wall time (ms) until
    the last one exited, and the hit latencies measured meanwhile. Every target is checked."""
    dests = [targets.new() for _ in range(clients)]
    settle()
    hits: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        c = srv.client()
        while not stop.is_set():
            hits.append(timed(lambda: c.post_job(HIT)))
            stop.wait(PROBE_EVERY)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    logs = [dest.with_name(dest.name + ".log") for dest in dests]
    started = time.perf_counter()
    procs = []
    for dest, log in zip(dests, logs, strict=True):
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(command(dest), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    wall = (time.perf_counter() - started) * 1e3
    stop.set()
    prober.join()
    for code, dest, log in zip(codes, dests, logs, strict=True):
        if code != 0:
            raise RuntimeError(f"{' '.join(command(dest))} exited {code}:\n{log.read_text()[-2000:]}")
        expect.check(dest)
        shutil.rmtree(dest)
        log.unlink()
    return wall, hits
