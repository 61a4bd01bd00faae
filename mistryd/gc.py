"""Garbage collection and the full-disk guard.

`plan_evictions` decides over plain values (no disk, no clock): which finished builds go, least
recently used first, to keep `max_build_bytes` and `max_build_age`. The Collector executes a plan:
it measures build folders (once per finished build), forgets each evicted build in the index first,
then renames its folder aside into `.mistryd/trash/` and deletes it there, so a reader never sees a
half-removed build under `ready/`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from . import leases
from .config import Config
from .errors import InsufficientStorage
from .layout import Layout
from .metrics import Metrics
from .storage import Storage, is_btrfs, make_storage
from .storage.base import disk_usage, shared_once_usage
from .store import Store

log = logging.getLogger("mistryd.gc")

UNFINISHED = frozenset({"queued", "running"})
TRASH = "trash"
TRASH_PREFIX = "trash-"  # in .mistryd/ itself, when the disk had no room for the trash folder
MIN_START_FREE = 1 << 20  # the index's WAL and shared-memory files, and a few pages
T = TypeVar("T")


@dataclass(frozen=True)
class BuildUsage:
    """What planning needs to know of one build."""

    project: str
    id: str
    group: str
    status: str
    last_used: float
    finished_at: float | None
    size: int  # bytes of its folder; 0 for a build with none

    @property
    def key(self) -> tuple[str, str]:
        return self.project, self.id


@dataclass(frozen=True)
class Eviction:
    build: BuildUsage
    reason: str  # "age" or "budget"


def newest_successful(builds: Iterable[BuildUsage]) -> set[tuple[str, str]]:
    """The newest successful build of every (project, group): what `latest` and `groups/<g>`
    point to, and what the next build of the group clones."""
    newest: dict[tuple[str, str], BuildUsage] = {}
    for b in builds:
        if b.status != "succeeded":
            continue
        seen = newest.get((b.project, b.group))
        if seen is None or (b.finished_at or 0.0) > (seen.finished_at or 0.0):
            newest[(b.project, b.group)] = b
    return {b.key for b in newest.values()}


def plan_evictions(builds: Iterable[BuildUsage], budget_bytes: int | None, max_age: float | None,
                   now: float, keep: Iterable[tuple[str, str]] = ()) -> list[Eviction]:
    """The builds to remove, in order. A build goes when it was last used more than `max_age`
    seconds before `now`, or while the builds (all of them, kept ones included) exceed
    `budget_bytes`. Never goes: a queued or running build, the newest successful build of a
    group, or a build in `keep` (what a pointer on disk names right now)."""
    builds = list(builds)
    protected = newest_successful(builds) | set(keep)
    candidates = sorted(
        (b for b in builds if b.status not in UNFINISHED and b.key not in protected),
        key=lambda b: (b.last_used, b.finished_at or 0.0, b.project, b.id),
    )
    total = sum(b.size for b in builds)
    plan = []
    for b in candidates:
        if max_age is not None and now - b.last_used > max_age:
            reason = "age"
        elif budget_bytes is not None and total > budget_bytes and b.size > 0:
            reason = "budget"
        else:
            continue
        plan.append(Eviction(b, reason))
        total -= b.size
    return plan


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_free_space(path: Path, min_free: int) -> None:
    """Refuse a new build (507) while the file system of build_path has less than `min_free`
    bytes free: a build that runs out of space mid-way only fails later and slower."""
    if min_free <= 0:
        return
    free = free_bytes(path)
    if free < min_free:
        raise InsufficientStorage(
            f"not enough free space for a new build in build_path={path}: {human(free)} free "
            f"({free} bytes), min_free_bytes={min_free}. Free space with `mistryd gc` (set "
            f"max_build_bytes or max_build_age so it has something to remove), add disk space, "
            f"or lower min_free_bytes")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class GcReport:
    dry_run: bool
    total_before: int  # bytes of all builds measured, before this pass
    budget: int | None
    max_age: int | None
    evicted: list[Eviction] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(e.build.size for e in self.evicted)

    @property
    def total_after(self) -> int:
        return self.total_before - self.freed

    def lines(self) -> list[str]:
        """What `mistryd gc` prints."""
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb} {e.build.project}/{e.build.id} ({human(e.build.size)}, {e.build.status}, "
               f"{'older than max_build_age' if e.reason == 'age' else 'over max_build_bytes'})"
               for e in self.evicted]
        budget = "no limit" if self.budget is None else human(self.budget)
        out.append(f"{'Would free' if self.dry_run else 'Freed'} {self.freed} bytes "
                   f"({human(self.freed)}) from {len(self.evicted)} build(s); builds "
                   f"{'would' if self.dry_run else 'now'} hold {human(self.total_after)} "
                   f"(max_build_bytes: {budget})")
        return out


class Collector:
    """Runs GC passes: on demand (`run_once`) and, after `start`, every `gc_interval` seconds.

    Without a `store` (`mistryd gc`, maybe on a full disk) the index is read without writing and
    opened for writes only when needed, after evictions have freed space."""

    def __init__(self, config: Config, layout: Layout, store: Store | None, storage: Storage,
                 metrics: Metrics, in_flight: Callable[[str, str], object] | None = None):
        self.config = config
        self.layout = layout
        self._store = store
        self.storage = storage
        self.metrics = metrics
        self.in_flight = in_flight or (lambda project, build_id: None)
        self.trash = layout.state_dir() / TRASH
        # on Btrfs (snapshots, reflinks) a build may share its data with others of its group
        self.copy_on_write = is_btrfs(layout.root)
        self.passes = 0  # completed automatic passes; tests wait on `passed`
        self.skipped_in_use = 0  # evictions put off because a reader held the build
        self.passed = threading.Condition()
        self._lock = threading.Lock()  # one pass at a time within a process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if store is not None:
            self._make_trash()  # now, while there is space: the trash is what frees it later

    @classmethod
    def for_server(cls, server) -> Collector:
        return cls(server.config, server.layout, server.store, server.storage, server.metrics,
                   server.in_flight)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.layout)  # opening migrates it: GC's size columns included
        return self._store

    # --- the background thread ----------------------------------------------------------------

    def start(self) -> None:
        if self.config.gc_interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="mistryd-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.gc_interval):
            try:
                self.run_once()
            except Exception:  # the next pass may well succeed
                log.exception("gc: the pass failed; retrying in %ds", self.config.gc_interval)
            with self.passed:
                self.passes += 1
                self.passed.notify_all()

    def wait_for_passes(self, count: int, timeout: float) -> bool:
        with self.passed:
            return self.passed.wait_for(lambda: self.passes >= count, timeout)

    # --- one pass -----------------------------------------------------------------------------

    def run_once(self, now: float | None = None, dry_run: bool = False) -> GcReport:
        """One pass. Space is freed before anything is written to the index (on a full disk the
        index cannot be written until then); a dry run writes nothing at all."""
        now = time.time() if now is None else now
        budget, max_age = self.config.max_build_bytes, self.config.max_build_age
        with self._lock:
            if not dry_run:
                self._empty_trash()
            rows = self._rows(dry_run)
            folders = self._ready_folders()  # after the rows: see _reconcile
            sizes: dict[tuple[str, str], int] = {}
            report = GcReport(dry_run, 0, budget, max_age)
            if budget is not None or max_age is not None:
                sizes = self._measure(rows, folders)
                builds = self._usage(rows, folders, sizes)
                report.total_before = sum(b.size for b in builds)
                plan = plan_evictions(builds, budget, max_age, now, keep=self.pointed_to())
                report.evicted = plan if dry_run else [e for e in plan if self._evict(e)]
            if not dry_run:
                self._record_sizes(rows, sizes, report)
                self._reconcile(rows, folders)
            if budget is not None and report.total_after > budget and not dry_run:
                log.warning("gc: builds hold %s, over max_build_bytes=%d, but the rest are "
                            "running, being read or the newest successful build of their group",
                            human(report.total_after), budget)
            return report

    def usage(self) -> list[BuildUsage]:
        """Every build in the index with its size (measuring, not recording, new ones)."""
        rows = self._rows(dry_run=True)
        folders = self._ready_folders()
        return self._usage(rows, folders, self._measure(rows, folders))

    def _rows(self, dry_run: bool) -> list[sqlite3.Row]:
        if self._store is not None:
            return self._store.gc_rows()
        index = self.store_path()
        if not index.exists():  # a new build_path, or a lost index: opening it re-indexes
            return [] if dry_run else self.store.gc_rows()
        return Store.read_gc_rows(str(index))

    def store_path(self) -> Path:
        return self.layout.state_dir() / "index.sqlite"

    def _ready_folders(self) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        for project in _subdirs(self.layout.root):
            found.update((project.name, build.name) for build in _subdirs(project / "ready"))
        return found

    def _measure(self, rows: list[sqlite3.Row],
                 folders: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Sizes of the finished builds not measured since they last finished: allocated
        blocks, each inode once; on Btrfs each shared extent once within a group (a group's
        builds are snapshots of each other), charged to its oldest holder."""
        new = [r for r in rows if r["status"] not in UNFINISHED
               and (r["size_bytes"] is None or r["size_of"] != r["finished_at"])]
        sizes = {(r["project"], r["id"]): 0 for r in new}  # builds without a folder hold nothing
        with_folder = [r for r in new if (r["project"], r["id"]) in folders]
        if not self.copy_on_write:
            sizes.update({(r["project"], r["id"]): disk_usage(self.layout.ready(r["project"], r["id"]))
                          for r in with_folder})
            return sizes
        for project, group in {(r["project"], r["grp"]) for r in with_folder}:
            members = sorted((r for r in rows if r["project"] == project and r["grp"] == group
                              and r["status"] not in UNFINISHED and (project, r["id"]) in folders),
                             key=lambda r: (r["finished_at"] or 0.0, r["id"]))
            measured = shared_once_usage([self.layout.ready(project, r["id"]) for r in members])
            sizes.update({(project, r["id"]): size
                          for r, size in zip(members, measured, strict=True)
                          if (project, r["id"]) in sizes})
        return sizes

    def _usage(self, rows: list[sqlite3.Row], folders: set[tuple[str, str]],
               sizes: dict[tuple[str, str], int]) -> list[BuildUsage]:
        out = []
        for r in rows:
            key = (r["project"], r["id"])
            if _lost_its_folder(r, folders):
                continue  # holds no space; _reconcile forgets it
            size = 0 if r["status"] in UNFINISHED else sizes.get(key, r["size_bytes"] or 0)
            out.append(BuildUsage(r["project"], r["id"], r["grp"], r["status"], r["last_used"],
                                  r["finished_at"], size))
        return out

    def pointed_to(self) -> set[tuple[str, str]]:
        """The builds `latest` and `groups/*` name on disk now (beside what the index says)."""
        found = set()
        for project in self.layout.root.iterdir():
            if project.name.startswith(".") or not project.is_dir():
                continue
            groups = project / "groups"
            links = [project / "latest", *(groups.iterdir() if groups.is_dir() else ())]
            for link in links:
                try:
                    found.add((project.name, Path(os.readlink(link)).name))
                except OSError:
                    pass
        return found

    # --- one eviction -------------------------------------------------------------------------

    def _evict(self, eviction: Eviction) -> bool:
        """Folder first, then the row: at no moment is a build served that the index has
        forgotten (a crash in between leaves a row without a folder, which is not served and
        which the next pass forgets)."""
        b = eviction.build
        if self.in_flight(b.project, b.id):
            return False
        ready = self.layout.ready(b.project, b.id)
        with leases.evicting(ready) as free:
            if not free:
                self.skipped_in_use += 1
                log.debug("gc: %s/%s is being downloaded; left for the next pass", b.project, b.id)
                return False
            aside = self._move_aside(b, ready)
        forgotten = self._forget(b)
        if forgotten is False:  # used or queued again since the plan was made: keep it
            if aside is not None:
                self._put_back(aside, ready)
            return False
        if aside is not None:
            self._remove(aside)
            self.metrics.builds_hosted.dec()
        if forgotten is None and self._forget(b) is None:  # space is free now: try again
            log.warning("gc: removed the folder of %s/%s but could not forget it in the index; "
                        "the next pass will", b.project, b.id)
        if self.copy_on_write:
            self._write(lambda store: store.remeasure_group(b.project, b.group))
        self.metrics.evicted.inc()
        log.info("gc: evicted %s/%s (%s, %s, last used %s, %s)", b.project, b.id, b.status,
                 human(b.size), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.last_used)),
                 "older than max_build_age" if eviction.reason == "age" else
                 "over max_build_bytes")
        return True

    def _forget(self, b: BuildUsage) -> bool | None:
        """True when the row is gone, False when the build was used again, None when the index
        could not be written (a full disk)."""
        return self._write(lambda store: store.forget_unused(b.project, b.id, b.last_used))

    def _move_aside(self, b: BuildUsage, ready: Path) -> Path | None:
        """Rename the build's folder into the trash; None when it has none."""
        name = f"{b.project}.{b.id}.{uuid.uuid4().hex[:8]}"
        aside = self.trash / name if self._make_trash() else self.layout.state_dir() / (
            TRASH_PREFIX + name)  # no room for the trash folder: its neighbour will do
        try:
            os.rename(ready, aside)
        except FileNotFoundError:
            return None  # a build without a folder (abandoned, cancelled while queued)
        return aside

    def _put_back(self, aside: Path, ready: Path) -> None:
        try:
            os.rename(aside, ready)
        except OSError:  # a new build of that id took its place meanwhile
            self._remove(aside)

    def _make_trash(self) -> bool:
        try:
            self.trash.mkdir(parents=True, exist_ok=True)
            return True
        except OSError as e:
            log.warning("gc: cannot make %s (%s)", self.trash, e)
            return False

    def _remove(self, path: Path) -> None:
        try:
            self.storage.remove(path)
        except OSError as e:  # left in the trash; the next pass tries again
            log.warning("gc: could not delete %s (%s); will retry", path, e)

    def _empty_trash(self) -> None:
        """What an interrupted pass left in the trash."""
        leftovers = list(self.layout.state_dir().glob(TRASH_PREFIX + "*"))
        if self.trash.is_dir():
            leftovers += self.trash.iterdir()
        for path in leftovers:
            self._remove(path)

    # --- the index, once space is free --------------------------------------------------------

    def _write(self, change: Callable[[Store], T]) -> T | None:
        """Apply `change` to the index; None when it cannot be written now (a full disk). The
        index is opened in here too: opening it writes (a migration, the WAL). `change` runs
        before this returns, so a lambda made in a loop sees that iteration's values (the
        `noqa: B023` of the callers)."""
        try:
            return change(self.store)
        except sqlite3.OperationalError as e:
            log.info("gc: the index cannot be written now (%s)", e)
            return None

    def _record_sizes(self, rows: list[sqlite3.Row], sizes: dict[tuple[str, str], int],
                      report: GcReport) -> None:
        gone = {e.build.key for e in report.evicted}
        finished = {(r["project"], r["id"]): r["finished_at"] for r in rows}
        for key, size in sizes.items():
            if key not in gone:
                self._write(lambda store: store.record_size(*key, size, finished[key]))  # noqa: B023

    def _reconcile(self, rows: list[sqlite3.Row], folders: set[tuple[str, str]]) -> None:
        """Make the index and ready/ agree again after a crash: forget the finished builds whose
        folder is gone, index the folders the index does not know. The rows were read before
        the folders were listed, and an eviction moves the folder before it forgets the row, so
        a build evicted meanwhile by another process is never taken for an unknown folder."""
        indexed = set()
        for r in rows:
            indexed.add((r["project"], r["id"]))
            if _lost_its_folder(r, folders) and self._write(
                    lambda store: store.forget_unused(r["project"], r["id"], r["last_used"])):  # noqa: B023
                log.info("gc: forgot %s/%s: its folder is gone", r["project"], r["id"])
        for project, build_id in sorted(folders - indexed):
            if self._write(lambda store: store.reindex_build(project, build_id)):  # noqa: B023
                log.warning("gc: indexed %s/%s, a finished build the index did not know",
                            project, build_id)


def _lost_its_folder(row: sqlite3.Row, folders: set[tuple[str, str]]) -> bool:
    """A finished build measured with a folder (size above 0) whose folder is gone: an eviction
    interrupted between its two steps. (Builds that never had a folder are measured as 0 and
    leave the index only by age.)"""
    return (row["status"] not in UNFINISHED and (row["size_bytes"] or 0) > 0
            and (row["project"], row["id"]) not in folders)


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if not p.name.startswith(".")
                and p.is_dir() and not p.is_symlink()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def startup_disk_problem(build_path: Path) -> str | None:
    """Why mistryd cannot start on build_path's file system (too full to open its index: SQLite
    needs room for its WAL and shared-memory files), or None. One line, naming the fix."""
    try:
        free = free_bytes(build_path)
    except FileNotFoundError:
        return None  # made at start-up
    if free >= MIN_START_FREE:
        return None
    return (f"build_path {build_path} has no free space ({free} bytes free; mistryd needs "
            f"{human(MIN_START_FREE)} to open its index): run `mistryd gc` or free space")


def collect(config: Config, dry_run: bool = False, now: float | None = None) -> GcReport:
    """One pass outside a server (`mistryd gc`); safe beside a running server on the same
    build_path: a build is evicted by whoever deletes its index row first. Works on a full
    disk: the index is read without writing, and written only once evictions freed space."""
    layout = Layout(config.build_path)
    collector = Collector(config, layout, None,
                          make_storage(config.filesystem, config.build_path), Metrics())
    return collector.run_once(now=now, dry_run=dry_run)
