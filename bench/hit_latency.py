"""1. Cache hit, server side: sync `POST /jobs` of a finished build, against the floor of the same
server answering `GET /healthz`, for projects holding a 1 MB, 50 MB and 500 MB file."""

from __future__ import annotations

from .harness import Env
from .stats import Row, Summary, interleaved

MEASUREMENT = "1 cache hit"
WITHIN_MS = 2.0
FLAT_RATIO = 1.25


def run(env: Env) -> list[Row]:
    mb = 1_000_000
    sizes = {"hit-1mb": mb, "hit-50mb": 50 * mb, "hit-500mb": 500 * mb}
    if env.scale.quick:
        sizes = {"hit-1mb": mb, "hit-2mb": 2 * mb}
    srv = env.server(sizes, "hit-latency")
    for project in sizes:
        srv.build(project)
    c = srv.client()
    for project in sizes:
        assert c.post_job({"project": project})["Cached"], f"{project} was not answered from cache"
    calls = {"floor": lambda: c.get("/healthz")}
    for project in sizes:
        calls[project] = lambda p=project: c.post_job({"project": p})
    samples = interleaved(calls, env.scale.reps(400, 10))
    floor = Summary.of(samples["floor"])
    rows = []
    for project, size in sizes.items():
        hit = Summary.of(samples[project])
        rows.append(Row(MEASUREMENT, f"hit POST /jobs, project with a {size // mb} MB file", "ms",
                        hit, "GET /healthz", floor, f"<= floor + {WITHIN_MS:g} ms",
                        hit.median - floor.median <= WITHIN_MS,
                        note=f"{hit.median - floor.median:+.2f} ms over the floor"))
    small, big = next(iter(sizes)), list(sizes)[-1]
    rows.append(Row(MEASUREMENT, f"hit, {sizes[big] // mb} MB vs {sizes[small] // mb} MB project",
                    "ms", Summary.of(samples[big]), f"hit, {sizes[small] // mb} MB project",
                    Summary.of(samples[small]), f"flat (<= {FLAT_RATIO}x)", None))
    rows[-1].met = rows[-1].ratio <= FLAT_RATIO
    return rows
