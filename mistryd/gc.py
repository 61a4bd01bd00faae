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
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .errors import InsufficientStorage
from .layout import Layout
from .metrics import Metrics
from .storage import Storage, make_storage
from .storage.base import disk_usage
from .store import Store

log = logging.getLogger("mistryd.gc")

UNFINISHED = frozenset({"queued", "running"})
TRASH = "trash"


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
    """Runs GC passes: on demand (`run_once`) and, after `start`, every `gc_interval` seconds."""

    def __init__(self, config: Config, layout: Layout, store: Store, storage: Storage,
                 metrics: Metrics, in_flight: Callable[[str, str], object] | None = None):
        self.config = config
        self.layout = layout
        self.store = store
        self.storage = storage
        self.metrics = metrics
        self.in_flight = in_flight or (lambda project, build_id: None)
        self.trash = layout.state_dir() / TRASH
        self.passes = 0  # completed automatic passes; tests wait on `passed`
        self.passed = threading.Condition()
        self._lock = threading.Lock()  # one pass at a time within a process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        store.ensure_size_columns()

    @classmethod
    def for_server(cls, server) -> Collector:
        return cls(server.config, server.layout, server.store, server.storage, server.metrics,
                   server.scheduler.in_flight)

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
        now = time.time() if now is None else now
        budget, max_age = self.config.max_build_bytes, self.config.max_build_age
        with self._lock:
            if not dry_run:
                self._empty_trash()
            if budget is None and max_age is None:
                return GcReport(dry_run, 0, budget, max_age)
            builds = self.usage()
            report = GcReport(dry_run, sum(b.size for b in builds), budget, max_age)
            plan = plan_evictions(builds, budget, max_age, now, keep=self.pointed_to())
            if dry_run:
                report.evicted = plan
            else:
                report.evicted = [e for e in plan if self._evict(e)]
            if budget is not None and report.total_after > budget and not dry_run:
                log.warning("gc: builds hold %s, over max_build_bytes=%d, but the rest are "
                            "running or the newest successful build of their group",
                            human(report.total_after), budget)
            return report

    def usage(self) -> list[BuildUsage]:
        """Every build in the index with its size, measuring each finished build once."""
        out = []
        for r in self.store.gc_rows():
            size = 0
            if r["status"] not in UNFINISHED:
                size = r["size_bytes"]
                if size is None or r["size_of"] != r["finished_at"]:
                    size = disk_usage(self.layout.ready(r["project"], r["id"]))
                    self.store.record_size(r["project"], r["id"], size, r["finished_at"])
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

    def _evict(self, eviction: Eviction) -> bool:
        b = eviction.build
        if self.in_flight(b.project, b.id) is not None:
            return False
        # the index first: from here on nobody is sent to this build, and if it was used or
        # queued again since the plan was made, the row stays and so does the folder
        if not self.store.forget_unused(b.project, b.id, b.last_used):
            return False
        ready = self.layout.ready(b.project, b.id)
        removed = False
        self.trash.mkdir(parents=True, exist_ok=True)
        aside = self.trash / f"{b.project}.{b.id}.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(ready, aside)
            removed = True
        except FileNotFoundError:
            pass  # a build without a folder (abandoned, cancelled while queued)
        if removed:
            self._remove(aside)
            self.metrics.builds_hosted.dec()
        self.metrics.evicted.inc()
        log.info("gc: evicted %s/%s (%s, %s, last used %s, %s)", b.project, b.id, b.status,
                 human(b.size), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.last_used)),
                 "older than max_build_age" if eviction.reason == "age" else
                 "over max_build_bytes")
        return True

    def _remove(self, path: Path) -> None:
        try:
            self.storage.remove(path)
        except OSError as e:  # left in the trash; the next pass tries again
            log.warning("gc: could not delete %s (%s); will retry", path, e)

    def _empty_trash(self) -> None:
        """What an interrupted pass left in the trash."""
        if self.trash.is_dir():
            for path in self.trash.iterdir():
                self._remove(path)


def collect(config: Config, dry_run: bool = False, now: float | None = None) -> GcReport:
    """One pass outside a server (`mistryd gc`); safe beside a running server on the same
    build_path: a build is evicted by whoever deletes its index row first."""
    layout = Layout(config.build_path)
    collector = Collector(config, layout, Store(layout),
                          make_storage(config.filesystem, config.build_path), Metrics())
    return collector.run_once(now=now, dry_run=dry_run)
