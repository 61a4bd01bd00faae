"""4. Incremental start: the time to prepare the workspace of a group build whose previous build's
cache holds 1 GB in 10,000 files: the Btrfs adapter's snapshot, the plain adapter's copy (on the
ext4 disk, which has no reflinks), and a raw `cp -a` of the same tree on the same disk. The
adapters are mistryd's own (`mistryd.storage`), the code the builder calls for a clone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mistryd.storage import make_storage

from .harness import Env, fill_tree, nonce, sh
from .stats import Row, Summary, timed

MEASUREMENT = "4 incremental start"
BTRFS_MAX_MS = 50.0
FLAT_RATIO = 1.5
FLAT_MS = 5.0


def run(env: Env) -> list[Row]:
    files = env.scale.size(10_000, 200)
    total = env.scale.size(1_000_000_000, 20_000_000)
    label = f"{total / 1e9:g} GB / {files:,} files" if not env.scale.quick \
        else f"{total / 1e6:g} MB / {files} files"
    btrfs, plain = make_storage("btrfs", Path("/")), make_storage("plain", Path("/"))

    mount = env.btrfs("4G")
    big_b, tiny_b = mount / "big", mount / "tiny"
    for path, n, size in ((big_b, files, total), (tiny_b, 10, 100_000)):
        btrfs.create(path)
        fill_tree(path / "data" / "cache", n, size)
    disk = env.dir("plain")
    big_p = disk / "big"
    fill_tree(big_p / "data" / "cache", files, total)
    os.sync()  # write-back of the fill must not land inside a timed clone

    counter = iter(range(1_000_000))

    def clone(storage, source: Path, how: str) -> float:
        dest = source.with_name(f"{source.name}-clone{next(counter)}")
        if how == "cp -a":
            ms = timed(lambda: sh(["cp", "-a", "--", str(source), str(dest)]))
        else:
            ms = timed(lambda: storage.clone(source, dest))
        if storage is not btrfs:
            # Snapshots stay: deleting one makes the btrfs cleaner walk 10,000 shared files for
            # many seconds, behind the next snapshot. The whole file system goes at the end.
            storage.remove(dest)
            os.sync()
        return ms

    snap_big, snap_tiny = [], []
    for _ in range(env.scale.reps(20, 3)):
        snap_big.append(clone(btrfs, big_b, "adapter"))
        snap_tiny.append(clone(btrfs, tiny_b, "adapter"))
    copies, raw = [], []
    for _ in range(env.scale.reps(5, 2)):
        copies.append(clone(plain, big_p, "adapter"))
        raw.append(clone(plain, big_p, "cp -a"))
    shutil.rmtree(big_p)
    served_big, served_small = through_server(env, mount, big_b / "data" / "cache",
                                              env.scale.reps(6, 2))
    cp = Summary.of(raw)
    snap = Row(MEASUREMENT, f"btrfs snapshot, cache of {label}", "ms", Summary.of(snap_big),
               "raw cp -a (ext4)", cp, f"< {BTRFS_MAX_MS:g} ms", None)
    snap.met = snap.value.median < BTRFS_MAX_MS
    flat = Row(MEASUREMENT, f"btrfs snapshot, {label} vs 10 files", "ms", Summary.of(snap_big),
               "btrfs snapshot, 10 files / 100 kB", Summary.of(snap_tiny),
               f"independent of size (<= {FLAT_RATIO}x or +{FLAT_MS:g} ms)", None)
    flat.met = flat.ratio <= FLAT_RATIO or flat.value.median - flat.base.median <= FLAT_MS
    copy = Row(MEASUREMENT, f"plain adapter clone (ext4), {label}", "ms", Summary.of(copies),
               "raw cp -a (ext4)", cp, "", None, note="ext4 has no reflinks: a full copy")
    served = Row(MEASUREMENT, f"server: group build's time outside image and run, {label}",
                 "ms", Summary.of(served_big), "the same, previous cache empty",
                 Summary.of(served_small), "", None,
                 note="mistryd on the loopback Btrfs: Duration minus its image and run timings "
                      "(workspace snapshot, params, log; 1 ms resolution)")
    return [snap, flat, copy, served]


def through_server(env: Env, mount: Path, cache: Path, reps: int) -> tuple[list, list]:
    """The same start through the real server: group builds whose previous build holds `cache`
    (reflinked in) or nothing. Returns ms per build outside image and run, per group."""
    srv = env.server({"hit": 0}, "incremental", build_path=mount / "builds")
    first = srv.build("hit", group="big", params={"n": nonce()})
    srv.build("hit", group="small", params={"n": nonce()})
    sh(["cp", "-a", "--reflink=always", f"{cache}/.", str(srv.artifacts(first).parent / "cache")])
    os.sync()

    def outside(group: str) -> float:
        info = srv.build("hit", group=group, params={"n": nonce()})
        if not info["Incremental"]:
            raise RuntimeError(f"the build of group {group} was not incremental")
        t = info.get("Timings") or {}
        return info["Duration"] / 1e6 - (t.get("image", 0) + t.get("run", 0)) * 1e3

    big, small = [], []
    for _ in range(reps):
        big.append(outside("big"))
        small.append(outside("small"))
    return big, small
