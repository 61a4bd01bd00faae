"""GC measures what a build really occupies: allocated blocks, each inode once, and on Btrfs each
shared extent once. Real files on real file systems (the session's loopback Btrfs for snapshots)."""

import os
import subprocess
import uuid
from pathlib import Path

from mistryd.config import from_dict
from mistryd.gc import Collector
from mistryd.layout import Layout, write_json_atomically
from mistryd.metrics import Metrics
from mistryd.storage.base import disk_usage, shared_once_usage
from mistryd.storage.btrfs import BtrfsStorage
from mistryd.store import Status, Store

MB = 1 << 20
GIB = 1 << 30


def snapshot_with_data(storage, source: Path, snapshot: Path) -> None:
    """`source` with 4 MiB of data, and `snapshot` of it with 1 MiB of its own (synced, so the
    extents are on disk)."""
    storage.create(source)
    (source / "cache").write_bytes(os.urandom(4 * MB))
    subprocess.run(["sync", "-f", str(source / "cache")], check=True)
    storage.clone(source, snapshot)
    (snapshot / "own").write_bytes(os.urandom(MB))
    subprocess.run(["sync", "-f", str(snapshot / "own")], check=True)


def test_a_sparse_file_counts_its_blocks_not_its_apparent_size(tmp_path):
    folder = tmp_path / "build"
    folder.mkdir()
    with open(folder / "sparse", "wb") as f:
        f.truncate(5 * GIB)
        f.write(b"x" * 4096)  # one real block at the start
    (folder / "real").write_bytes(os.urandom(MB))
    size = disk_usage(folder)
    assert MB <= size < 2 * MB  # the apparent 5 GiB is not counted


def test_hard_links_are_counted_once_and_symlinks_not_followed(tmp_path):
    folder, outside = tmp_path / "build", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "a").write_bytes(os.urandom(MB))
    for i in range(5):
        os.link(folder / "a", folder / f"link{i}")
    (outside / "big").write_bytes(os.urandom(4 * MB))
    os.symlink(outside, folder / "to-outside")
    os.symlink(outside / "big", folder / "to-big")
    assert MB <= disk_usage(folder) < MB + 256 * 1024


def test_a_snapshot_shares_its_data_with_its_source_and_is_counted_once(btrfs_root):
    base = btrfs_root / f"sizes-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    storage = BtrfsStorage()
    source, snapshot = base / "source", base / "snapshot"
    snapshot_with_data(storage, source, snapshot)
    try:
        assert disk_usage(snapshot) >= 5 * MB  # each alone: the shared 4 MiB in both
        source_size, snapshot_size = shared_once_usage([source, snapshot])
        assert 4 * MB <= source_size < 4 * MB + 128 * 1024
        assert MB <= snapshot_size < MB + 128 * 1024  # only what it does not share
    finally:
        storage.remove(snapshot)
        storage.remove(source)


def test_gc_charges_a_group_snapshot_only_for_its_own_data(btrfs_root, tmp_path):
    """Two builds of a group, the second a snapshot of the first: together they hold 5 MiB
    on disk, and GC says so (not 9 MiB)."""
    build_path = btrfs_root / f"builds-{uuid.uuid4().hex[:8]}"
    build_path.mkdir()
    layout, storage = Layout(build_path), BtrfsStorage()
    store = Store(layout)
    first, second = layout.ready("p", "a" * 64), layout.ready("p", "b" * 64)
    first.parent.mkdir(parents=True)
    snapshot_with_data(storage, first, second)
    for when, folder in enumerate((first, second), start=1):
        info = {"ID": folder.name, "Project": "p", "Group": "g", "ExitCode": 0,
                "Status": "succeeded", "Params": {}}
        write_json_atomically(folder / "build_info.json", info)
        store.record_finished("p", folder.name, Status.SUCCEEDED, info, now=1000.0 + when)
    (tmp_path / "projects").mkdir()
    config = from_dict({"projects_path": str(tmp_path / "projects"), "build_path": str(build_path),
                        "max_build_bytes": 100 * MB})
    collector = Collector(config, layout, store, storage, Metrics())
    try:
        assert collector.copy_on_write
        report = collector.run_once(now=2000.0)
        assert 5 * MB <= report.total_before < 5 * MB + 256 * 1024
    finally:
        storage.remove(second)
        storage.remove(first)
