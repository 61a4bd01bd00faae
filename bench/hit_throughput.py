"""2. Cache hit throughput: cached `POST /jobs` from 8 concurrent keep-alive clients for 10 s in
all, against `GET /healthz` the same way. The 10 s are cut into windows that alternate between the
two, so machine noise hits both alike; each window gives one rate."""

from __future__ import annotations

from . import load
from .harness import Env
from .stats import Row, Summary

MEASUREMENT = "2 hit throughput"
MIN_RATIO = 0.5


def latency(runs: list[dict]) -> Summary:
    """The latency distribution under load, from wrk's per-run percentiles (ms)."""
    return Summary(sum(r["requests"] for r in runs), min(r["lat_min_us"] for r in runs) / 1e3,
                   sorted(r["lat_p50_us"] for r in runs)[len(runs) // 2] / 1e3,
                   max(r["lat_p99_us"] for r in runs) / 1e3,
                   max(r["lat_max_us"] for r in runs) / 1e3)


def run(env: Env) -> list[Row]:
    srv = env.server({"hit": 0}, "hit-throughput")
    srv.build("hit")
    windows, seconds = (5, 2.0) if not env.scale.quick else (1, 1.0)
    hits, gets = [], []
    for _ in range(windows):
        gets.append(load.trivial(srv.port, seconds))
        hits.append(load.cached_job(srv.port, "hit", seconds))
    hit_rate = Summary.of([r["rate"] for r in hits])
    get_rate = Summary.of([r["rate"] for r in gets])
    rate_row = Row(MEASUREMENT, f"cached POST /jobs, 8 clients, {windows} x {seconds:g} s",
                   "req/s", hit_rate, "GET /healthz, same load", get_rate,
                   f">= {MIN_RATIO}x the GET rate", None)
    rate_row.met = rate_row.ratio >= MIN_RATIO
    hit_lat, get_lat = latency(hits), latency(gets)
    lat_row = Row(MEASUREMENT, "latency under that load, cached POST /jobs", "ms", hit_lat,
                  "GET /healthz under load", get_lat, "", None,
                  note=f"slowest answer {hit_lat.max:.1f} ms (GET: {get_lat.max:.1f} ms); "
                       "upstream stalls some hits 2 s")
    return [rate_row, lat_row]
