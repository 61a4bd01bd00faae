"""Garbage collection and the disk: a full disk, crashes between the steps of an eviction, and
downloads in flight. Real loop file systems, real files, the real `mistryd` command."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
from support import make_setup, start_mistryd

from mistryd import leases
from mistryd.config import from_dict
from mistryd.gc import Collector, free_bytes, startup_disk_problem
from mistryd.layout import Layout, write_json_atomically
from mistryd.metrics import Metrics
from mistryd.storage import PlainStorage
from mistryd.store import Status, Store

MB = 1 << 20
MISTRYD = Path(sys.executable).parent / "mistryd"


@pytest.fixture
def small_disk():
    """A 64 MB ext4 loop file system under /var/tmp, with no blocks reserved for root (so that
    filled means full for everyone); unmounted and deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="mistryd-disk-", dir="/var/tmp"))
    image, mount = base / "fs.img", base / "mnt"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def fill(disk: Path) -> None:
    """Write until the file system says ENOSPC (big blocks, then small ones for the rest)."""
    for block in ("1M", "4k", "1k"):
        subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler-{block}", f"bs={block}"],
                       capture_output=True, check=False)
    assert free_bytes(disk) < 16 * 1024


def index_rows(build_path: Path) -> set[str]:
    db = sqlite3.connect(f"file:{build_path}/.mistryd/index.sqlite?mode=ro&immutable=1", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT id FROM builds")}
    finally:
        db.close()


def ready_ids(build_path: Path, project: str = "gc-blob") -> set[str]:
    return {p.name for p in (build_path / project / "ready").iterdir()}


def state_of(build_path: Path) -> tuple:
    """What a dry run must leave as it was: the index's bytes and time, the files beside it,
    the build folders."""
    index = build_path / ".mistryd" / "index.sqlite"
    return (index.read_bytes(), index.stat().st_mtime_ns,
            sorted(p.name for p in index.parent.iterdir()), ready_ids(build_path))


def mistryd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(MISTRYD), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_gc_frees_a_full_disk_and_its_dry_run_writes_nothing(small_disk, tmp_path, docker_engine):
    build_path = small_disk / "builds"
    setup = make_setup(tmp_path, ("gc-blob",), build_path=str(build_path),
                       max_build_bytes=3 * MB, min_free_bytes=0)
    server = start_mistryd(setup.config, setup.port)
    try:
        ids = []
        for n in range(3):
            r = requests.post(f"{setup.url}/jobs", timeout=300,
                              json={"project": "gc-blob", "params": {"mb": "2", "n": str(n)}})
            assert r.status_code == 201 and r.json()["ExitCode"] == 0, r.text
            ids.append(r.json()["ID"])
    finally:
        server.terminate()
        server.wait(60)
    fill(small_disk)

    problem = startup_disk_problem(build_path)
    assert problem is not None and "\n" not in problem
    assert f"build_path {build_path} has no free space (" in problem
    assert "run `mistryd gc` or free space" in problem
    started = mistryd("--config", str(setup.config))  # the real server says it in one line
    assert started.returncode == 2 and started.stderr.strip() == f"mistryd: {problem}"

    before = state_of(build_path)
    dry = mistryd("gc", "--config", str(setup.config), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line.split()[2] for line in dry.stdout.splitlines()[:-1]] == \
        [f"gc-blob/{i}" for i in ids[:2]]
    assert state_of(build_path) == before

    real = mistryd("gc", "--config", str(setup.config))
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines()[-1].startswith("Freed ")
    assert free_bytes(small_disk) >= 4 * MB
    assert ready_ids(build_path) == {ids[2]} and index_rows(build_path) == {ids[2]}
    assert not list((build_path / ".mistryd" / "trash").iterdir())
    assert startup_disk_problem(build_path) is None


# --- evictions, on a hand-made build_path (no Docker needed) ----------------------------------


def make_build(layout: Layout, store: Store, build_id: str, finished: float) -> Path:
    folder = layout.ready("p", build_id)
    (folder / "data" / "artifacts").mkdir(parents=True)
    (folder / "data" / "artifacts" / "blob").write_bytes(os.urandom(MB))
    info = {"ID": build_id, "Project": "p", "Group": "", "ExitCode": 0, "Status": "succeeded",
            "Params": {}}
    write_json_atomically(folder / "build_info.json", info)
    store.record_finished("p", build_id, Status.SUCCEEDED, info, now=finished)
    return folder


class Crash(BaseException):
    """The process dies here (not an error any code path may catch)."""


class StoreThatDiesWhileForgetting(Store):
    def forget_unused(self, project, build_id, last_used):
        raise Crash


def collector_for(tmp_path: Path, store: Store, **limits) -> Collector:
    (tmp_path / "projects").mkdir(exist_ok=True)
    config = from_dict({"projects_path": str(tmp_path / "projects"),
                        "build_path": str(store.layout.root), **limits})
    return Collector(config, store.layout, store, PlainStorage(), Metrics())


def served_without_row(layout: Layout, store: Store) -> list[str]:
    return [p.name for p in (layout.root / "p" / "ready").iterdir()
            if (p / "build_info.json").exists() and store.get("p", p.name) is None]


def test_a_crash_inside_an_eviction_leaves_nothing_served_without_a_row(tmp_path):
    layout = Layout(tmp_path / "builds")
    store = Store(layout)
    old, mid, new = (make_build(layout, store, c * 64, 1000.0 + i) for i, c in enumerate("abc"))
    collector_for(tmp_path, store, max_build_bytes=10 * MB).run_once(now=2000.0)  # measured

    dying = StoreThatDiesWhileForgetting(layout)
    with pytest.raises(Crash):
        collector_for(tmp_path, dying, max_build_bytes=int(2.5 * MB)).run_once(now=2000.0)
    assert served_without_row(layout, store) == []
    assert not old.exists() and store.get("p", old.name) is not None  # a row, nothing served

    report = collector_for(tmp_path, Store(layout), max_build_bytes=int(2.5 * MB)).run_once(
        now=2000.0)
    assert report.evicted == []  # the rest fits: nothing else goes
    assert store.get("p", old.name) is None  # the row of the lost folder is forgotten
    assert mid.is_dir() and new.is_dir()
    assert not list((layout.state_dir() / "trash").iterdir())


def test_a_folder_left_without_a_row_is_indexed_again_and_then_collected(tmp_path):
    """What the old order (row first, then folder) left after a crash."""
    layout = Layout(tmp_path / "builds")
    store = Store(layout)
    lost = make_build(layout, store, "a" * 64, 1000.0)
    make_build(layout, store, "b" * 64, 1001.0)
    store.forget("p", lost.name)
    os.utime(lost / "build_info.json", (1000.0, 1000.0))  # it finished before the other one
    collector = collector_for(tmp_path, store, max_build_bytes=int(1.5 * MB))
    collector.run_once(now=2000.0)
    assert store.get("p", lost.name) is not None
    assert [e.build.id for e in collector.run_once(now=time.time() + 10).evicted] == [lost.name]
    assert not lost.exists() and served_without_row(layout, store) == []


def test_a_build_being_downloaded_is_left_for_the_next_pass(tmp_path):
    layout = Layout(tmp_path / "builds")
    store = Store(layout)
    read, other, newest = (make_build(layout, store, c * 64, 1000.0 + i)
                           for i, c in enumerate("abc"))
    collector = collector_for(tmp_path, store, max_build_bytes=int(1.5 * MB))
    with leases.reading(read):
        report = collector.run_once(now=2000.0)
        assert [e.build.id for e in report.evicted] == [other.name]
        assert collector.skipped_in_use == 1
        assert (read / "data" / "artifacts" / "blob").stat().st_size == MB
    assert [e.build.id for e in collector.run_once(now=2000.0).evicted] == [read.name]
    assert newest.is_dir() and not read.exists()
