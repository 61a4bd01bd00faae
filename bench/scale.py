"""7. Scale: cache-hit latency and dashboard (`GET /`) latency with 10, 100 and 10,000 builds in
history. The history is seeded the way builds leave it: a row in the SQLite index
(`Store.record_finished`, the builder's own call) and a ready folder with build_info.json and
out.log for each."""

from __future__ import annotations

import hashlib
import json

from mistryd.layout import INFO_FILE, LOG_FILE, Layout
from mistryd.store import Status, Store

from .harness import Env
from .stats import Row, Summary, interleaved

MEASUREMENT = "7 scale"
FLAT_RATIO = 1.25
START = 1_700_000_000.0


def seed(build_path, project: str, first: int, last: int) -> None:
    """Builds first..last-1 of `project`, in the index and on disk, older than the real one."""
    store = Store(Layout(build_path))
    for i in range(first, last):
        build_id = hashlib.sha256(f"bench-seeded-{i}".encode()).hexdigest()
        status = Status.FAILED if i % 7 == 0 else Status.SUCCEEDED
        info = {"ID": build_id, "Project": project, "Group": f"g{i % 5}",
                "Params": {"ref": f"v{i}"}, "ExitCode": 0 if status is Status.SUCCEEDED else 1,
                "Status": status.value, "StartedAt": "2023-11-14T22:13:20Z",
                "Duration": 2_600_000_000, "Incremental": i % 2 == 1, "Cached": False,
                "Coalesced": False, "URL": f"job/{project}/{build_id}",
                "Timings": {"queued": 0.1, "image": 0.5, "run": 2.0}}
        folder = build_path / project / "ready" / build_id
        (folder / "data" / "artifacts").mkdir(parents=True)
        (folder / INFO_FILE).write_text(json.dumps(info))
        (folder / LOG_FILE).write_text(f"seeded build {i}\n")
        store.record_finished(project, build_id, status, info, now=START + i)


def run(env: Env) -> list[Row]:
    """Three servers that differ only in history size, timed in turns, so machine drift during
    the run cannot pass for growth."""
    small, full, large = 10, 100, env.scale.size(10_000, 300)
    sizes = (small, full, large)
    calls = {}
    for size in sizes:
        srv = env.server({"hit": 0}, f"scale-{size}")
        srv.build("hit")
        seed(srv.build_path, "hit", 0, size - 1)  # and the real one
        c = srv.client()
        calls[f"floor {size}"] = lambda c=c: c.get("/healthz")
        calls[f"hit {size}"] = lambda c=c: c.post_job({"project": "hit"})
        calls[f"dashboard {size}"] = lambda c=c: c.get("/", accept="text/html")
    measured = {name: Summary.of(s)
                for name, s in interleaved(calls, env.scale.reps(200, 5)).items()}
    floors = ", ".join(f"{measured[f'floor {n}'].median:.2f}" for n in sizes)
    rows = []
    for name, figure in (("hit", "cache hit POST /jobs"), ("dashboard", "dashboard GET /")):
        row = Row(MEASUREMENT, f"{figure}, {large:,} builds in history", "ms",
                  measured[f"{name} {large}"], f"{small} builds", measured[f"{name} {small}"],
                  f"flat (<= {FLAT_RATIO}x)", None,
                  note=f"GET /healthz floor with {small} / {full} / {large:,} builds: {floors} ms")
        row.met = row.ratio <= FLAT_RATIO
        rows.append(row)
    # The dashboard lists the 20 newest builds: with 10 in history it shows 10 rows, so the
    # 10-build page is also lighter. This row compares two full pages: history size alone.
    rows.append(Row(MEASUREMENT, f"dashboard GET /, {large:,} builds in history", "ms",
                    measured[f"dashboard {large}"], f"{full} builds (a full page too)",
                    measured[f"dashboard {full}"], "", None,
                    note="the same 20 rows rendered on both sides"))
    return rows
