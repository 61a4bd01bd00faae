"""Garbage collection and the full-disk guard, on both storage adapters, with real builds.

Passes are run with `collector.run_once(now=...)`; nothing here sleeps."""

import dataclasses
import json
import logging
import subprocess
import sys
import time

import requests

MB = 1 << 20
PROJECT = "gc-blob"  # writes `mb` MiB of artifacts; fails after writing them when `fail` is set


def blob(srv, group: str = "", **params) -> dict:
    return srv.build(PROJECT, group=group, params={"mb": "1", **params})


def ready(srv, info: dict):
    return srv.build_path / PROJECT / "ready" / info["ID"]


def pointer_target(srv, group: str = "") -> str:
    link = srv.build_path / PROJECT / ("groups/" + group if group else "latest")
    return link.resolve(strict=True).name


def evicted_ids(report) -> list[str]:
    return [e.build.id for e in report.evicted]


def metric(srv, name: str) -> float:
    text = requests.get(f"{srv.url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def evicted_metric(srv) -> float:
    return metric(srv, "mistryd_builds_evicted_total")


def test_gc_keeps_the_byte_budget_and_the_newest_build_of_every_group(start_server, fs_kind,
                                                                     caplog):
    srv = start_server(projects=(PROJECT,), max_build_bytes=int(3.5 * MB), gc_interval=0)
    failed = blob(srv, "a", n="0", fail="yes")
    a1 = blob(srv, "a", n="1")
    a2 = blob(srv, "a", n="2")
    b1 = blob(srv, "b")
    n1 = blob(srv)
    assert failed["ExitCode"] == 1 and all(x["ExitCode"] == 0 for x in (a1, a2, b1, n1))
    assert a2["Incremental"]

    with caplog.at_level(logging.INFO, logger="mistryd.gc"):
        report = srv.server.collector.run_once()

    # least recently used first, failed builds included, until the rest fits
    assert evicted_ids(report) == [failed["ID"], a1["ID"]]
    assert [e.reason for e in report.evicted] == ["budget", "budget"]
    assert report.total_before > 5 * MB and report.total_after <= 3.5 * MB
    assert report.freed >= 2 * MB
    for gone in (failed, a1):
        assert not ready(srv, gone).exists()
        assert srv.server.store.get(PROJECT, gone["ID"]) is None
        assert f"gc: evicted {PROJECT}/{gone['ID']}" in caplog.text
    for kept in (a2, b1, n1):
        assert (ready(srv, kept) / "data" / "artifacts" / "blob").stat().st_size == MB
    assert (pointer_target(srv, "a"), pointer_target(srv, "b"), pointer_target(srv)) == \
        (a2["ID"], b1["ID"], n1["ID"])
    assert not list((srv.build_path / ".mistryd" / "trash").iterdir())
    assert evicted_metric(srv) == 2
    assert metric(srv, "mistry_builds_hosted") == 3

    assert blob(srv, "a", n="2")["Cached"]  # the kept builds still answer from cache
    again = blob(srv, "a", n="1")  # an evicted build is simply built again
    assert not again["Cached"] and again["ExitCode"] == 0 and again["Incremental"]
    # a1 is now the newest of group a, so a2 (used before a1 was rebuilt) is the one to go
    assert evicted_ids(srv.server.collector.run_once()) == [a2["ID"]]
    assert pointer_target(srv, "a") == a1["ID"]


def test_least_recently_used_counts_a_cache_hit_and_dry_run_removes_nothing(start_server,
                                                                           fs_kind):
    srv = start_server(projects=(PROJECT,), max_build_bytes=int(2.5 * MB), gc_interval=0)
    x1, x2, x3 = (blob(srv, n=str(i)) for i in (1, 2, 3))
    assert blob(srv, n="1")["Cached"]  # x1 used after x2 was built

    dry = srv.server.collector.run_once(dry_run=True)
    assert evicted_ids(dry) == [x2["ID"]] and dry.dry_run
    assert ready(srv, x2).is_dir() and srv.server.store.get(PROJECT, x2["ID"]) is not None
    assert evicted_metric(srv) == 0

    with open(ready(srv, x2) / "data" / "artifacts" / "blob", "rb") as reader:
        reader.read(1000)
        real = srv.server.collector.run_once()
        assert len(reader.read()) == MB - 1000  # a download under way finishes
    assert evicted_ids(real) == [x2["ID"]]
    assert not ready(srv, x2).exists()
    assert not list((srv.build_path / ".mistryd" / "trash").iterdir())
    assert ready(srv, x1).is_dir() and ready(srv, x3).is_dir()
    assert blob(srv, n="1")["Cached"]
    assert evicted_metric(srv) == 1


def test_age_limit_evicts_builds_unused_for_longer_except_the_newest(start_server, fs_kind):
    srv = start_server(projects=(PROJECT,), max_build_age=3600, gc_interval=0)
    old_fail = blob(srv, n="0", fail="yes")
    y1 = blob(srv, n="1")
    y2 = blob(srv, n="2")
    collector = srv.server.collector
    assert collector.run_once(now=time.time() + 60).evicted == []
    later = collector.run_once(now=time.time() + 2 * 3600)
    assert evicted_ids(later) == [old_fail["ID"], y1["ID"]]
    assert {e.reason for e in later.evicted} == {"age"}
    assert not ready(srv, y1).exists() and ready(srv, y2).is_dir()
    assert collector.run_once(now=time.time() + 10 * 3600).evicted == []  # y2 is `latest`


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mistryd.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_gc_command_dry_run_then_for_real_beside_a_running_server(start_server, fs_kind,
                                                                 tmp_path):
    srv = start_server(projects=(PROJECT,), gc_interval=0)
    z1 = blob(srv, n="1")
    z2 = blob(srv, n="2")
    config = tmp_path / "gc.json"
    config.write_text(json.dumps({"projects_path": str(srv.projects_path),
                                  "build_path": str(srv.build_path), "max_build_bytes": MB}))

    dry = run_cli("gc", "--config", str(config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith(f"would remove {PROJECT}/{z1['ID']} (1.0 MiB, succeeded, "
                               "over max_build_bytes)")
    assert lines[-1].startswith("Would free ") and "from 1 build(s)" in lines[-1]
    assert int(lines[-1].split()[2]) >= MB
    assert ready(srv, z1).is_dir() and srv.server.store.get(PROJECT, z1["ID"]) is not None

    real = run_cli("--config", str(config), "gc")
    assert real.returncode == 0, real.stderr
    assert real.stdout.startswith(f"removed {PROJECT}/{z1['ID']} ")
    assert "Freed " in real.stdout
    assert not ready(srv, z1).exists() and srv.server.store.get(PROJECT, z1["ID"]) is None
    assert ready(srv, z2).is_dir() and blob(srv, n="2")["Cached"]
    assert not blob(srv, n="1")["Cached"]  # the server builds it again

    config.write_text(json.dumps({"projects_path": str(srv.projects_path),
                                  "build_path": str(srv.build_path)}))
    idle = run_cli("gc", "--config", str(config), "--dry-run")
    assert idle.returncode == 0 and "set max_build_bytes or max_build_age" in idle.stdout


def test_a_full_disk_refuses_new_builds_with_507_but_serves_cache_hits(start_server, fs_kind):
    huge = 1 << 60  # more than any test file system has free
    srv = start_server(projects=(PROJECT,), gc_interval=0)
    kept = blob(srv, n="kept")
    srv.server.config = dataclasses.replace(srv.server.config, min_free_bytes=huge)

    for asynchronous in (False, True):
        r = srv.post_job({"project": PROJECT, "params": {"mb": "1", "n": "new"}},
                         asynchronous=asynchronous)
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert f"build_path={srv.build_path}" in error and f"min_free_bytes={huge}" in error
        assert "free (" in error and "`mistryd gc`" in error
    assert srv.server.store.count() == 1  # nothing queued, no folder made
    assert not list((srv.build_path / PROJECT / "pending").iterdir())

    hit = srv.post_job({"project": PROJECT, "params": {"mb": "1", "n": "kept"}})
    assert hit.status_code == 201 and hit.json()["Cached"] and hit.json()["ID"] == kept["ID"]

    srv.server.config = dataclasses.replace(srv.server.config, min_free_bytes=0)
    assert blob(srv, n="new")["ExitCode"] == 0


def test_the_server_collects_by_itself_every_gc_interval(start_server, fs_kind):
    srv = start_server(projects=(PROJECT,), max_build_bytes=1, gc_interval=1)
    v1 = blob(srv, n="1")
    v2 = blob(srv, n="2")
    collector = srv.server.collector
    # the pass after next started after v2 had finished
    assert collector.wait_for_passes(collector.passes + 2, timeout=30)
    assert not ready(srv, v1).exists() and ready(srv, v2).is_dir()
    assert srv.server.store.get(PROJECT, v1["ID"]) is None
    assert evicted_metric(srv) == 1
    srv.server.collector.stop()
    assert not collector._thread.is_alive()
