"""7. Scale: cache-hit latency and dashboard (`GET /`) latency with 10 and then 10,000 builds in
history, on one server. The history is seeded the way builds leave it: a row in the SQLite index
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
    small, full, large = 10, 100, env.scale.size(10_000, 300)
    srv = env.server({"hit": 0}, "scale")
    srv.build("hit")
    c = srv.client()
    calls = {"floor": lambda: c.get("/healthz"), "hit": lambda: c.post_job({"project": "hit"}),
             "dashboard": lambda: c.get("/", accept="text/html")}
    reps = env.scale.reps(200, 5)
    measured = {}
    seeded = 1  # the real build
    for size in (small, full, large):
        seed(srv.build_path, "hit", seeded - 1, size - 1)
        seeded = size
        measured[size] = {name: Summary.of(s) for name, s in interleaved(calls, reps).items()}
    floors = ", ".join(f"{measured[n]['floor'].median:.2f}" for n in measured)
    rows = []
    for name, figure in (("hit", "cache hit POST /jobs"), ("dashboard", "dashboard GET /")):
        row = Row(MEASUREMENT, f"{figure}, {large:,} builds in history", "ms",
                  measured[large][name], f"{small} builds", measured[small][name],
                  f"flat (<= {FLAT_RATIO}x)", None,
                  note=f"GET /healthz floor at {small} / {full} / {large:,} builds: {floors} ms")
        row.met = row.ratio <= FLAT_RATIO
        rows.append(row)
    # The dashboard lists the 20 newest builds: with 10 in history it shows 10 rows, so the
    # 10-build page is also lighter. This row compares two full pages: history size alone.
    rows.append(Row(MEASUREMENT, f"dashboard GET /, {large:,} builds in history", "ms",
                    measured[large]["dashboard"], f"{full} builds (a full page too)",
                    measured[full]["dashboard"], "", None,
                    note="the same 20 rows rendered on both sides"))
    return rows
