"""The SQLite index of every build: listing, history and recovery without reading every folder.

The folders under build_path stay the truth for finished builds (upstream-compatible); the index
mirrors them, holds the queue's view of builds not yet finished, and is rebuilt from the folders
when it is missing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from .errors import MistryError
from .jobs import is_opaque, public_params, record_status
from .layout import INFO_FILE, Layout

USAGE_FLUSH_SECONDS = 2.0


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"
    ABANDONED = "abandoned"
    SUPERSEDED = "superseded"  # cancelled by a newer request for its project and group

    @property
    def finished(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


SUPERSEDED_BY = "superseded by "  # the reason of a cancel asked for by a newer request


def cancel_status(reason: str | None) -> Status:
    """How a cancelled job ends: `superseded` when a newer request of its project and group
    asked for it (config `duplicates: supersede`), else `cancelled`. The reason travels with the
    cancel to whichever builder runs the job, on any machine, so the status does too."""
    return Status.SUPERSEDED if (reason or "").startswith(SUPERSEDED_BY) else Status.CANCELLED


class IndexTooNew(MistryError):
    """The index was written by a newer mistryd: its schema is one this code does not know."""

    def __init__(self, path: Path | str, found: int, known: int):
        super().__init__(
            f"the index {path} is at schema version {found}, newer than this mistryd knows "
            f"(up to {known}): run the newer mistryd, or move the file aside and it is rebuilt "
            "from the build folders (queued jobs are then forgotten)")


# --- the schema: one ordered list of migrations --------------------------------------------------
#
# An index is at version N (`PRAGMA user_version`) when the first N migrations have been applied.
# Each migration runs in a transaction of its own, together with the version it brings, at open.
# Append new ones at the end; never edit or reorder one that has been released.
#
# Indexes made before the version was kept are all at version 0, whatever their shape (the table
# and counts of one, the `opaque` column or GC's size columns of another): migrations 1-4 adopt
# them, so each checks what is there. From 5 on a migration runs exactly once and need not.

BUILDS = """
CREATE TABLE IF NOT EXISTS builds (
    project     TEXT NOT NULL,
    id          TEXT NOT NULL,
    grp         TEXT NOT NULL DEFAULT '',
    params      TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL,
    exit_code   INTEGER,
    reason      TEXT NOT NULL DEFAULT '',
    rebuild     INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,  -- consecutive interruptions (crashes while running)
    queued_at   REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    last_used   REAL NOT NULL,
    info        TEXT,
    PRIMARY KEY (project, id)
);
CREATE INDEX IF NOT EXISTS builds_by_time ON builds (queued_at DESC);
CREATE INDEX IF NOT EXISTS builds_by_project ON builds (project, queued_at DESC);
CREATE INDEX IF NOT EXISTS builds_by_status ON builds (status, queued_at DESC);
CREATE INDEX IF NOT EXISTS builds_by_group ON builds (project, grp, queued_at DESC);
"""

# Builds per (project, status), kept by triggers, so the dashboard's counts cost the same at ten
# builds and at a million.
COUNTS = """
CREATE TABLE build_counts (
    project TEXT NOT NULL,
    status  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (project, status)
);
INSERT INTO build_counts SELECT project, status, COUNT(*) FROM builds GROUP BY project, status;
CREATE TRIGGER build_counts_insert AFTER INSERT ON builds BEGIN
    INSERT INTO build_counts VALUES (NEW.project, NEW.status, 1)
        ON CONFLICT (project, status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER build_counts_delete AFTER DELETE ON builds BEGIN
    UPDATE build_counts SET n = n - 1 WHERE project = OLD.project AND status = OLD.status;
END;
CREATE TRIGGER build_counts_update AFTER UPDATE OF status ON builds
    WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE build_counts SET n = n - 1 WHERE project = OLD.project AND status = OLD.status;
    INSERT INTO build_counts VALUES (NEW.project, NEW.status, 1)
        ON CONFLICT (project, status) DO UPDATE SET n = n + 1;
END;
"""


def _add_counts(db: sqlite3.Connection) -> None:
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='build_counts'"
                      ).fetchone():
        _run_script(db, COUNTS)


def _add_columns(db: sqlite3.Connection, columns: dict[str, str]) -> None:
    have = {r[1] for r in db.execute("PRAGMA table_info(builds)")}
    for column, kind in columns.items():
        if column not in have:
            db.execute(f"ALTER TABLE builds ADD COLUMN {column} {kind}")


def _add_opaque_params(db: sqlite3.Connection) -> None:
    """The '_' params of a job that may still run, kept apart from the shown ones."""
    _add_columns(db, {"opaque": "TEXT NOT NULL DEFAULT '{}'"})


def _add_gc_sizes(db: sqlite3.Connection) -> None:
    """GC's measure of a finished build's folder, and which finish it measured."""
    _add_columns(db, {"size_bytes": "INTEGER", "size_of": "REAL"})


def _add_queue_leases(db: sqlite3.Connection) -> None:
    """The embedded queue's lease on a running job (who holds it, which take, until when) and a
    cancel asked for while it runs (its builder stops it)."""
    _add_columns(db, {"lease_owner": "TEXT", "lease_token": "INTEGER NOT NULL DEFAULT 0",
                      "lease_expires": "REAL", "cancel_reason": "TEXT"})


def _add_log_files(db: sqlite3.Connection) -> None:
    """Which file is a running job's log ("st_dev:st_ino"), written by its builder when it opens
    it: a reader in another process follows that very file (docs/queue.md)."""
    _add_columns(db, {"log_file": "TEXT"})


# The dashboard's charts over time: one row a minute at most (mistryd/history.py samples), with
# the request counters of the process that wrote it (they start at 0 with every process) and the
# queue at that moment.
SAMPLES = """
CREATE TABLE samples (
    at        REAL PRIMARY KEY,
    process   TEXT NOT NULL,
    hits      INTEGER NOT NULL,
    started   INTEGER NOT NULL,
    coalesced INTEGER NOT NULL,
    queued    INTEGER NOT NULL,
    running   INTEGER NOT NULL
);
"""

# Dependency-ordered batches (mistryd/batches.py): a batch, and each of its jobs with what it needs
# and how far it is. `state` is `waiting` (for its needs), `submitted` (its build is in the queue:
# the build's row tells how it goes), `skipped` (a need did not succeed), or how its build ended.
# The opaque params of a job not yet submitted are kept here until it is, as the builds table
# keeps them until a job ends.
BATCHES = """
CREATE TABLE batches (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX batches_open ON batches (created_at) WHERE finished_at IS NULL;
CREATE TABLE batch_jobs (
    batch        TEXT NOT NULL,
    name         TEXT NOT NULL,
    position     INTEGER NOT NULL,
    project      TEXT NOT NULL,
    build_id     TEXT NOT NULL,
    grp          TEXT NOT NULL DEFAULT '',
    params       TEXT NOT NULL DEFAULT '{}',
    opaque       TEXT NOT NULL DEFAULT '{}',
    rebuild      INTEGER NOT NULL DEFAULT 0,
    needs        TEXT NOT NULL DEFAULT '[]',
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    submitted_at REAL,
    PRIMARY KEY (batch, name)
);
"""


Migration = str | Callable[[sqlite3.Connection], None]  # a script, or a function for what SQL cannot say

MIGRATIONS: tuple[Migration, ...] = (
    BUILDS,               # 1
    _add_counts,          # 2
    _add_opaque_params,   # 3
    _add_gc_sizes,        # 4
    _add_queue_leases,    # 5
    SAMPLES,              # 6
    _add_log_files,       # 7
    BATCHES,              # 8
)


def migrate(db: sqlite3.Connection, path: Path | str) -> int:
    """Bring the index at `path` to the newest schema; its version. IndexTooNew when it is
    newer than MIGRATIONS (a newer mistryd wrote it), before anything is changed."""
    while (version := schema_version(db, path)) < len(MIGRATIONS):
        with _transaction(db):
            if schema_version(db, path) == version:  # else another process migrated meanwhile
                migration = MIGRATIONS[version]
                if isinstance(migration, str):
                    _run_script(db, migration)
                else:
                    migration(db)
                db.execute(f"PRAGMA user_version = {version + 1}")
    return version


def schema_version(db: sqlite3.Connection, path: Path | str) -> int:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise IndexTooNew(path, version, len(MIGRATIONS))
    return version


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """A script's statements one at a time, in the caller's transaction (`executescript` would
    commit it first). `complete_statement` keeps a trigger's body, with its own ';', whole."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                db.execute(statement)
            statement = ""


_UNFINISHED = "(" + ", ".join(f"'{s.value}'" for s in Status if not s.finished) + ")"


def _matching(project: str, status: Status | None, group: str,
              repository: str = "", builder: str = "") -> tuple[str, tuple]:
    """The WHERE clause and its arguments for builds that match every filter given (`repository`:
    push builds of that repository, by their `.repository` param; docs/push.md; `builder`: the
    builds a builder finished, by their record's `Builder`)."""
    tests = (("project = ?", project), ("status = ?", status and status.value), ("grp = ?", group),
             ("""json_extract(params, '$.".repository"') = ?""", repository),
             ("json_extract(info, '$.Builder') = ?", builder))
    given = [(test, value) for test, value in tests if value]
    return " AND ".join(test for test, _ in given) or "1", tuple(value for _, value in given)


def _slim(info: dict) -> dict:
    """A build record as the index keeps it: without the log, without opaque params."""
    slim = {k: v for k, v in info.items() if k not in ("ContainerStdouterr",)}
    slim["Params"] = public_params(slim.get("Params") or {})
    return slim


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that takes the write lock at once (no upgrade from a read lock, which
    SQLite refuses with SQLITE_BUSY when another writer came first)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@dataclass
class BuildRow:
    project: str
    id: str
    group: str
    params: dict
    status: Status
    exit_code: int | None
    reason: str
    rebuild: bool
    interruptions: int  # consecutive runs a crash or stop cut short; 0 once it finishes
    queued_at: float
    started_at: float | None
    finished_at: float | None
    last_used: float
    info: dict | None
    opaque: dict  # the '_' params, kept only while the job may still run; never shown

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> BuildRow:
        info = json.loads(row["info"]) if row["info"] else None
        if info is not None and isinstance(info.get("Params"), dict):  # rows of older versions
            info["Params"] = public_params(info["Params"])
        return cls(
            project=row["project"], id=row["id"], group=row["grp"],
            params=public_params(json.loads(row["params"])), status=Status(row["status"]),
            exit_code=row["exit_code"], reason=row["reason"], rebuild=bool(row["rebuild"]),
            interruptions=row["attempts"], queued_at=row["queued_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], last_used=row["last_used"], info=info,
            opaque=json.loads(row["opaque"]),
        )

    @property
    def state(self) -> str:
        """Upstream's two states."""
        return "ready" if self.status.finished else "pending"


@dataclass
class BatchJobRow:
    """One job of a batch (mistryd/batches.py) and, when it has been submitted, its build's row as
    the index has it now (`build_*`: None when the index has no row for `build_id`)."""

    batch: str
    name: str
    position: int
    project: str
    build_id: str
    group: str
    params: dict  # the public params; the opaque ones are in `opaque` until it is submitted
    opaque: dict
    rebuild: bool
    needs: tuple[str, ...]
    state: str  # waiting, submitted, skipped, or how its build ended (a Status value)
    reason: str = ""
    submitted_at: float | None = None
    build_status: Status | None = None
    build_reason: str = ""
    build_started_at: float | None = None
    build_finished_at: float | None = None

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> BatchJobRow:
        status = row["build_status"]
        return cls(
            batch=row["batch"], name=row["name"], position=row["position"],
            project=row["project"], build_id=row["build_id"], group=row["grp"],
            params=json.loads(row["params"]), opaque=json.loads(row["opaque"]),
            rebuild=bool(row["rebuild"]), needs=tuple(json.loads(row["needs"])),
            state=row["state"], reason=row["reason"], submitted_at=row["submitted_at"],
            build_status=None if status is None else Status(status),
            build_reason=row["build_reason"] or "", build_started_at=row["build_started_at"],
            build_finished_at=row["build_finished_at"])


@dataclass(frozen=True)
class BatchRow:
    id: str
    created_at: float
    finished_at: float | None


class Store:
    def __init__(self, layout: Layout):
        self.layout = layout
        self.path = layout.state_dir() / "index.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._usage: dict[tuple[str, str], float] = {}
        self._usage_lock = threading.Lock()
        self._usage_flushed = 0.0
        fresh = not self.path.exists()
        migrate(self._conn(), self.path)
        if fresh:
            self.reindex_from_disk()

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the index file and close: the last process of a server
        leaves one file behind, as a server in one process does."""
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.close()

    def close(self) -> None:
        """Close this thread's connection (a process about to fork: no connection may cross)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # switching the mode takes a lock that processes opening the index at once (a
            # server's children at its start) would contend for: only when it is not WAL yet
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA secure_delete=ON")  # opaque params leave no bytes behind
            self._local.conn = conn
        return conn

    # --- writes -------------------------------------------------------------------------------

    def record_queued(self, project: str, build_id: str, group: str, params: dict,
                      rebuild: bool, now: float | None = None) -> None:
        """The opaque '_' params are kept apart (the job needs them if it runs after a restart)
        and dropped when it finishes."""
        now = time.time() if now is None else now
        opaque = {k: v for k, v in params.items() if is_opaque(k)}
        self._conn().execute(
            """INSERT INTO builds (project, id, grp, params, opaque, status, rebuild, queued_at,
                                   last_used)
               VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)
               ON CONFLICT (project, id) DO UPDATE SET
                 status='queued', params=excluded.params, opaque=excluded.opaque,
                 rebuild=excluded.rebuild, queued_at=excluded.queued_at, started_at=NULL,
                 finished_at=NULL, exit_code=NULL, reason='', last_used=excluded.last_used,
                 lease_owner=NULL, lease_expires=NULL, cancel_reason=NULL""",
            (project, build_id, group, json.dumps(public_params(params)),
             json.dumps(opaque, sort_keys=True), int(rebuild), now, now),
        )

    def record_running(self, project: str, build_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._conn().execute(
            "UPDATE builds SET status='running', started_at=? "
            "WHERE project=? AND id=?", (now, project, build_id),
        )

    def record_finished(self, project: str, build_id: str, status: Status, info: dict,
                        reason: str = "", now: float | None = None) -> None:
        now = time.time() if now is None else now
        slim = _slim(info)
        self._conn().execute(
            """INSERT INTO builds (project, id, grp, params, status, exit_code, reason, queued_at,
                                   started_at, finished_at, last_used, info, attempts)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)
               ON CONFLICT (project, id) DO UPDATE SET
                 status=excluded.status, exit_code=excluded.exit_code, reason=excluded.reason,
                 finished_at=excluded.finished_at, last_used=excluded.last_used,
                 info=excluded.info, opaque='{}', attempts=0""",
            (project, build_id, info.get("Group", ""),
             json.dumps(public_params(info.get("Params", {}))),
             status.value, info.get("ExitCode"), reason, now, now, now, now, json.dumps(slim)),
        )

    def record_verification(self, project: str, build_id: str, started_at: str,
                            fields: dict) -> bool:
        """Add a verification's fields (Reproducible, VerifiedAt: mistryd/verify.py) to a
        finished build's record, while the row is still the run that was verified."""
        cur = self._conn().execute(
            "UPDATE builds SET info=json_patch(info, ?) WHERE project=? AND id=? "
            "AND json_extract(info, '$.StartedAt')=?",
            (json.dumps(fields), project, build_id, started_at))
        return cur.rowcount == 1

    def touch(self, project: str, build_id: str, now: float | None = None,
              flush: bool = True) -> None:
        """A cache hit counts as use (for least-recently-used eviction). Hits are the hot path,
        so uses are gathered in memory and written in one transaction at most every
        USAGE_FLUSH_SECONDS (and before garbage collection reads them); with flush=False never
        now (the next touch that may flush writes them)."""
        now = time.time() if now is None else now
        with self._usage_lock:
            self._usage[(project, build_id)] = now
        if flush and self.usage_due(now):
            self.flush_usage()

    def usage_due(self, now: float | None = None) -> bool:
        """Whether the next touch writes the uses gathered."""
        return (time.time() if now is None else now) - self._usage_flushed >= USAGE_FLUSH_SECONDS

    def flush_usage(self) -> None:
        with self._usage_lock:
            batch, self._usage = self._usage, {}
            self._usage_flushed = time.time()
        if batch:
            db = self._conn()
            with _transaction(db):
                db.executemany(
                    "UPDATE builds SET last_used=MAX(last_used, ?) WHERE project=? AND id=?",
                    [(t, p, i) for (p, i), t in batch.items()])

    def transition(self, project: str, build_id: str, to: Status, reason: str,
                   now: float | None = None) -> bool:
        """Move an unfinished build to a final state; False when it had already ended."""
        cur = self._conn().execute(
            "UPDATE builds SET status=?, reason=?, finished_at=? "
            f"WHERE project=? AND id=? AND status IN {_UNFINISHED}",
            (to.value, reason, time.time() if now is None else now, project, build_id))
        return cur.rowcount == 1

    def count_interruption(self, project: str, build_id: str) -> int:
        """A running build was cut short by a crash or a stop: count it; returns how many times
        in a row that has happened."""
        row = self._conn().execute(
            "UPDATE builds SET attempts=attempts+1 WHERE project=? AND id=? RETURNING attempts",
            (project, build_id)).fetchone()
        return row[0] if row else 0

    def forget(self, project: str, build_id: str) -> None:
        self._conn().execute("DELETE FROM builds WHERE project=? AND id=?", (project, build_id))

    # --- the embedded queue (mistryd/queue/embedded.py): a job's row is its queue entry --------

    def queue_peek(self, project: str, build_id: str) -> tuple[Status | None, float | None]:
        """(status, when it last ended) of a job; (None, None) when it has no row."""
        row = self._conn().execute("SELECT status, finished_at FROM builds WHERE project=? AND id=?",
                                   (project, build_id)).fetchone()
        return (Status(row[0]), row[1]) if row else (None, None)

    def queue_submit(self, project: str, build_id: str, group: str, params: dict, rebuild: bool,
                     backlog: int | None, seen: tuple[Status | None, float | None] | None,
                     now: float) -> str:
        """In one transaction: 'joined' when the job is in flight; 'ended' when it ended since
        `seen` (a peek); 'full' when `backlog` jobs already wait; else 'queued' (recorded)."""
        db = self._conn()
        with _transaction(db):
            row = db.execute("SELECT status, finished_at FROM builds WHERE project=? AND id=?",
                             (project, build_id)).fetchone()
            if row is not None and not Status(row[0]).finished:
                return "joined"
            if seen is not None and (row[1] if row else None) != seen[1]:
                return "ended"
            if backlog is not None and self._count_status(Status.QUEUED) >= backlog:
                return "full"
            self.record_queued(project, build_id, group, params, rebuild, now=now)
            return "queued"

    def queue_take(self, builder: str, lease_seconds: float, exclude: set[tuple[str, str]],
                   now: float) -> tuple[BuildRow, int] | None:
        """The oldest queued job not in `exclude`, now running under a lease for `builder`;
        with the lease's token."""
        db = self._conn()
        with _transaction(db):
            candidates = db.execute(
                "SELECT project, id FROM builds WHERE status='queued' ORDER BY queued_at ASC, "
                "rowid ASC LIMIT ?", (len(exclude) + 1,)).fetchall()
            chosen = next(((p, i) for p, i in candidates if (p, i) not in exclude), None)
            if chosen is None:
                return None
            token = db.execute(
                "UPDATE builds SET status='running', started_at=?, lease_owner=?, "
                "lease_token=lease_token+1, lease_expires=?, cancel_reason=NULL, log_file=NULL "
                "WHERE project=? AND id=? RETURNING lease_token",
                (now, builder, now + lease_seconds, *chosen)).fetchone()[0]
            row = self.get(*chosen)
        assert row is not None
        return row, token

    _HOLDS = "project=? AND id=? AND status='running' AND lease_owner=? AND lease_token=?"

    def queue_lease(self, project: str, build_id: str) -> tuple[BuildRow, str, int] | None:
        """A running job's row, with who holds its lease and the lease's token."""
        found = self._conn().execute(
            "SELECT lease_owner, lease_token FROM builds WHERE project=? AND id=? "
            "AND status='running' AND lease_owner IS NOT NULL", (project, build_id)).fetchone()
        row = self.get(project, build_id) if found else None
        return None if row is None or row.status is not Status.RUNNING else (row, *found)

    def queue_heartbeat(self, project: str, build_id: str, builder: str, token: int,
                        lease_seconds: float, now: float) -> tuple[bool, str | None]:
        """(whether the lease is still held, the reason of a cancel asked for meanwhile)."""
        row = self._conn().execute(
            f"UPDATE builds SET lease_expires=? WHERE {self._HOLDS} RETURNING cancel_reason",
            (now + lease_seconds, project, build_id, builder, token)).fetchone()
        return (True, row[0]) if row else (False, None)

    def queue_note_log(self, project: str, build_id: str, builder: str, token: int,
                       log_file: str) -> bool:
        cur = self._conn().execute(f"UPDATE builds SET log_file=? WHERE {self._HOLDS}",
                                   (log_file, project, build_id, builder, token))
        return cur.rowcount == 1

    def queue_log_file(self, project: str, build_id: str) -> str | None:
        row = self._conn().execute(
            "SELECT log_file FROM builds WHERE project=? AND id=? AND status='running'",
            (project, build_id)).fetchone()
        return row[0] if row else None

    def queue_expire_leases(self, owner_prefix: str) -> list[tuple[str, str]]:
        """Expire the leases of every builder whose name starts with `owner_prefix` (a builder
        known to be gone): the next take or reap queues their jobs again."""
        rows = self._conn().execute(
            "UPDATE builds SET lease_expires=0 WHERE status='running' AND "
            "substr(lease_owner, 1, ?) = ? RETURNING project, id",
            (len(owner_prefix), owner_prefix)).fetchall()
        return [(p, i) for p, i in rows]

    def queue_cancel_reason(self, project: str, build_id: str, builder: str,
                            token: int) -> str | None:
        row = self._conn().execute(f"SELECT cancel_reason FROM builds WHERE {self._HOLDS}",
                                   (project, build_id, builder, token)).fetchone()
        return row[0] if row else None

    def queue_finish(self, project: str, build_id: str, builder: str, token: int, status: Status,
                     info: dict, reason: str, now: float) -> bool:
        """Record the end of a leased job; False (nothing written) when the lease is lost."""
        db = self._conn()
        with _transaction(db):
            if db.execute(f"SELECT 1 FROM builds WHERE {self._HOLDS}",
                          (project, build_id, builder, token)).fetchone() is None:
                return False
            self.record_finished(project, build_id, status, info, reason, now=now)
            db.execute("UPDATE builds SET lease_owner=NULL, lease_expires=NULL, "
                       "cancel_reason=NULL WHERE project=? AND id=?", (project, build_id))
        return True

    def queue_release(self, project: str, build_id: str, builder: str, token: int) -> bool:
        """A leased job back to queued, where it was; False when the lease is lost."""
        cur = self._conn().execute(
            "UPDATE builds SET status='queued', started_at=NULL, lease_owner=NULL, "
            f"lease_expires=NULL WHERE {self._HOLDS}", (project, build_id, builder, token))
        return cur.rowcount == 1

    def queue_cancel(self, project: str, build_id: str, reason: str, info: dict | None,
                     now: float) -> str:
        """'ended' (it was queued: now cancelled, with `info` as its record), 'requested' (it
        runs: the cancel waits for its builder) or 'not-in-flight'."""
        db = self._conn()
        with _transaction(db):
            row = db.execute("SELECT status FROM builds WHERE project=? AND id=?",
                             (project, build_id)).fetchone()
            if row is None or Status(row[0]).finished:
                return "not-in-flight"
            if row[0] == Status.RUNNING.value:
                db.execute("UPDATE builds SET cancel_reason=COALESCE(cancel_reason, ?) "
                           "WHERE project=? AND id=?", (reason, project, build_id))
                return "requested"
            db.execute(
                "UPDATE builds SET status=?, reason=?, finished_at=?, last_used=?, "
                "info=?, exit_code=?, opaque='{}', attempts=0 WHERE project=? AND id=?",
                (cancel_status(reason).value, reason, now, now,
                 json.dumps(_slim(info)) if info is not None else None,
                 (info or {}).get("ExitCode"), project, build_id))
            return "ended"

    def queue_reap(self, now: float, every_lease: bool,
                   max_interruptions: int) -> list[tuple[str, str, Status]]:
        """Running jobs whose lease expired (every one with `every_lease`) end or go back to
        the queue: cancelled when a cancel was asked for, abandoned when interrupted
        `max_interruptions` times in a row, else queued again where they were."""
        db = self._conn()
        moved: list[tuple[str, str, Status]] = []
        with _transaction(db):
            rows = db.execute(
                "SELECT project, id, attempts, cancel_reason FROM builds WHERE status='running' "
                "AND (? OR lease_expires IS NULL OR lease_expires < ?)",
                (int(every_lease), now)).fetchall()
            for project, build_id, attempts, cancel_reason in rows:
                if cancel_reason is not None:
                    to, reason = cancel_status(cancel_reason), cancel_reason
                elif attempts + 1 >= max_interruptions:
                    to, reason = Status.ABANDONED, (f"interrupted {attempts + 1} times in a row; "
                                                    "not tried again")
                else:
                    to, reason = Status.QUEUED, ""
                db.execute(
                    "UPDATE builds SET status=?, reason=?, attempts=attempts+1, lease_owner=NULL, "
                    "lease_expires=NULL, started_at=CASE WHEN ?='queued' THEN NULL "
                    "ELSE started_at END, finished_at=CASE WHEN ?='queued' THEN NULL ELSE ? END, "
                    "opaque=CASE WHEN ?='queued' THEN opaque ELSE '{}' END "
                    "WHERE project=? AND id=?",
                    (to.value, reason, to.value, to.value, now, to.value, project, build_id))
                moved.append((project, build_id, to))
        return moved

    def queue_next_expiry(self) -> float | None:
        """When the first lease of a running job expires (None: nothing runs)."""
        return self._conn().execute(
            "SELECT MIN(lease_expires) FROM builds WHERE status='running'").fetchone()[0]

    def queue_outcome(self, project: str, build_id: str) -> tuple[Status, dict | None, str] | None:
        """(status, record, reason) of a job that is not in flight; None while it is (or when
        it has no row)."""
        row = self._conn().execute("SELECT status, info, reason FROM builds WHERE project=? AND id=?",
                                   (project, build_id)).fetchone()
        if row is None or not Status(row[0]).finished:
            return None
        return Status(row[0]), json.loads(row[1]) if row[1] else None, row[2]

    def queue_position(self, project: str, build_id: str) -> int | None:
        row = self._conn().execute(
            "SELECT queued_at, rowid FROM builds WHERE project=? AND id=? AND status='queued'",
            (project, build_id)).fetchone()
        if row is None:
            return None
        return self._conn().execute(
            "SELECT COUNT(*) FROM builds WHERE status='queued' AND "
            "(queued_at < ? OR (queued_at = ? AND rowid < ?))", (row[0], row[0], row[1])).fetchone()[0]

    def queue_in_flight(self, project: str | None = None, build_id: str | None = None,
                        limit: int = 1000) -> list[tuple[BuildRow, str | None]]:
        """The jobs queued or running (or the one with this key), oldest first (the `limit`
        oldest), each with its lease holder."""
        where, args = f"status IN {_UNFINISHED}", []
        if project is not None and build_id is not None:
            where, args = where + " AND project=? AND id=?", [project, build_id]
        cur = self._conn().execute(
            f"SELECT * FROM builds WHERE {where} ORDER BY queued_at, rowid LIMIT ?", [*args, limit])
        return [(BuildRow.from_sql(r), r["lease_owner"]) for r in cur.fetchall()]

    def queue_counts(self) -> tuple[int, int]:
        """(queued, running), from the trigger-kept counts."""
        return self._count_status(Status.QUEUED), self._count_status(Status.RUNNING)

    def _count_status(self, status: Status) -> int:
        return self._conn().execute("SELECT COALESCE(SUM(n), 0) FROM build_counts WHERE status=?",
                                    (status.value,)).fetchone()[0]

    # --- reads: every question asked of the index, newest first unless said otherwise ---------

    def get(self, project: str, build_id: str) -> BuildRow | None:
        rows = self._select("project = ? AND id = ?", (project, build_id), limit=1)
        return rows[0] if rows else None

    def unfinished(self) -> list[BuildRow]:
        """Builds left queued or running (by a crash or a stop), oldest first."""
        return self._select(f"status IN {_UNFINISHED}", order="queued_at ASC")

    def newest(self, limit: int | None = None) -> list[BuildRow]:
        """Every build (or the `limit` newest)."""
        return self._select("1", (), limit=limit)

    def history(self, project: str = "", status: Status | None = None, group: str = "",
                limit: int | None = None, offset: int = 0, repository: str = "",
                builder: str = "") -> list[BuildRow]:
        """A page of builds that match every filter given ('' and None match any)."""
        where, args = _matching(project, status, group, repository, builder)
        return self._select(where, args, limit=limit, offset=offset)

    def count(self, project: str = "", status: Status | None = None, group: str = "",
              repository: str = "", builder: str = "") -> int:
        """How many builds `history` has for these filters."""
        where, args = _matching(project, status, group, repository, builder)
        return self._conn().execute(f"SELECT COUNT(*) FROM builds WHERE {where}", args).fetchone()[0]

    def recent_finished(self, limit: int, project: str = "") -> list[BuildRow]:
        """The newest finished builds (of `project`, or of all)."""
        where, args = _matching(project, None, "")
        return self._select(f"{where} AND status NOT IN {_UNFINISHED}", args, limit=limit)

    def latest_per_group(self, project: str, limit: int) -> list[BuildRow]:
        """The newest build of each group of `project` ('' is the build without a group), by
        group name. SQLite returns the bare `rowid` of the row that holds MAX() in an aggregate
        query."""
        return self._select("rowid IN (SELECT r FROM (SELECT rowid AS r, MAX(queued_at) "
                            "FROM builds WHERE project = ? GROUP BY grp))",
                            (project,), limit=limit, order="grp ASC")

    def newest_succeeded(self, project: str, group: str | None, before: float | None = None,
                         other_than: str = "") -> BuildRow | None:
        """The newest successful build of `project` in `group` (None: in any group), queued
        before `before` when given, other than the build `other_than` (explain.py's "nearest")."""
        where = "project = ? AND status = 'succeeded' AND id != ?"
        args: list[str | float] = [project, other_than]
        if group is not None:
            where, args = where + " AND grp = ?", [*args, group]
        if before is not None:
            where, args = where + " AND queued_at < ?", [*args, before]
        rows = self._select(where, tuple(args), limit=1)
        return rows[0] if rows else None

    def find_by_prefix(self, prefix: str, limit: int = 20) -> list[BuildRow]:
        """Builds whose id starts with `prefix`, of any project."""
        return self._select("id >= ? AND id < ?", (prefix, prefix + "\uffff"), limit=limit)

    def status_counts(self, project: str = "") -> dict[str, int]:
        """Builds per status (every status, zero or not), from the trigger-kept counts."""
        where, args = ("WHERE project = ?", (project,)) if project else ("", ())
        rows = self._conn().execute(
            f"SELECT status, SUM(n) FROM build_counts {where} GROUP BY status", args).fetchall()
        counts = {status.value: 0 for status in Status}
        counts.update({status: n for status, n in rows if status in counts})
        return counts

    def record_sample(self, at: float, process: str, hits: int, started: int, coalesced: int,
                      queued: int, running: int, keep_seconds: float) -> None:
        """One point of the dashboard's charts; points older than `keep_seconds` go."""
        db = self._conn()
        with _transaction(db):
            db.execute("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (at, process, hits, started, coalesced, queued, running))
            db.execute("DELETE FROM samples WHERE at < ?", (at - keep_seconds,))

    def samples_since(self, since: float, limit: int = 50_000) -> list[sqlite3.Row]:
        """The chart points from `since` on, oldest first, and the one before it (a process's
        counters are cumulative: the first point's change is measured from it)."""
        return self._conn().execute(
            "SELECT * FROM samples WHERE at >= COALESCE((SELECT MAX(at) FROM samples "
            "WHERE at < ?), ?) ORDER BY at LIMIT ?", (since, since, limit)).fetchall()

    def _select(self, where: str, args: tuple = (), limit: int | None = None, offset: int = 0,
                order: str = "queued_at DESC") -> list[BuildRow]:
        cur = self._conn().execute(
            f"SELECT * FROM builds WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, -1 if limit is None else limit, offset))
        return [BuildRow.from_sql(r) for r in cur.fetchall()]

    # --- garbage collection (mistryd/gc.py) ---------------------------------------------------

    def gc_rows(self) -> list[sqlite3.Row]:
        try:
            self.flush_usage()
        except sqlite3.OperationalError:  # a full disk: plan with older uses; GC frees space
            pass
        return self._select_gc_rows(self._conn())

    @staticmethod
    def read_gc_rows(index_path: str) -> list[sqlite3.Row]:
        """gc_rows without opening a Store and without writing (`mistryd gc` on a full disk).
        An ordinary WAL connection must first make and grow the `-shm` file, which fails on a
        full disk; a connection in exclusive locking mode keeps that index in its own memory.
        While a server holds the index open (its `-shm` exists) the exclusive lock is refused,
        and the index is read the ordinary way."""
        try:
            return Store._read_gc_rows_once(index_path, exclusive=True)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
        return Store._read_gc_rows_once(index_path, exclusive=False)

    def record_size(self, project: str, build_id: str, size: int, finished_at: float) -> None:
        """The size of a finished build's folder; `size_of` says which finish it measured (a
        rebuild finishes again and is measured again)."""
        self._conn().execute(
            "UPDATE builds SET size_bytes=?, size_of=? WHERE project=? AND id=? AND finished_at=?",
            (size, finished_at, project, build_id, finished_at))

    def remeasure(self, project: str, build_id: str) -> None:
        """Measure a build's folder again at the next pass (it holds more now: a tar cache)."""
        self._conn().execute("UPDATE builds SET size_of=NULL WHERE project=? AND id=?",
                             (project, build_id))

    def remeasure_group(self, project: str, group: str) -> None:
        """Measure a group's builds again at the next pass: on Btrfs a snapshot is charged only
        for what it does not share with older builds of its group, so when one of those goes,
        the rest own more than they were charged for."""
        self._conn().execute("UPDATE builds SET size_of=NULL WHERE project=? AND grp=?",
                             (project, group))

    def forget_unused(self, project: str, build_id: str, last_used: float) -> bool:
        """Forget a finished build unless it was used or queued again after `last_used`;
        whoever deletes the row owns the eviction (a server and `mistryd gc` may race)."""
        cur = self._conn().execute(
            "DELETE FROM builds WHERE project=? AND id=? AND last_used<=? "
            f"AND status NOT IN {_UNFINISHED}", (project, build_id, last_used))
        return cur.rowcount == 1

    def reindex_build(self, project: str, build_id: str) -> bool:
        """Index one finished folder under ready/ that has no row (an eviction interrupted by
        an older mistryd, or a copied-in build); False when it has a row or no readable record."""
        if self.get(project, build_id) is not None:
            return False
        return self._index_folder(project, build_id)

    _GC_COLUMNS = ("project", "id", "grp", "status", "last_used", "finished_at", "size_bytes",
                   "size_of")

    @staticmethod
    def _select_gc_rows(db: sqlite3.Connection) -> list[sqlite3.Row]:
        """The rows GC plans with. An index that an older mistryd made and nobody has migrated
        yet (`read_gc_rows` reads without writing, so it cannot migrate) has no size columns:
        they read as NULL, as for builds not measured yet."""
        have = {r[1] for r in db.execute("PRAGMA table_info(builds)")}
        columns = ", ".join(c if c in have else f"NULL AS {c}" for c in Store._GC_COLUMNS)
        return db.execute(f"SELECT {columns} FROM builds").fetchall()

    @staticmethod
    def _read_gc_rows_once(index_path: str, exclusive: bool) -> list[sqlite3.Row]:
        db = sqlite3.connect(f"file:{index_path}?mode=rw", uri=True, isolation_level=None,
                             timeout=0.2 if exclusive else 30)
        try:
            db.row_factory = sqlite3.Row
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            schema_version(db, index_path)  # a newer mistryd's index: refused, not misread
            return Store._select_gc_rows(db)
        finally:
            db.close()

    # --- recovery -----------------------------------------------------------------------------

    def reindex_from_disk(self) -> int:
        """Rebuild the index from the ready folders (a lost or new index)."""
        return sum(self._index_folder(f.parent.parent.parent.name, f.parent.name)
                   for f in self.layout.root.glob(f"*/ready/*/{INFO_FILE}"))

    def _index_folder(self, project: str, build_id: str) -> bool:
        """Record a finished build from its folder's build_info.json (finished when that file
        was written); False when it has no readable record."""
        info_file = self.layout.ready(project, build_id) / INFO_FILE
        try:
            info = json.loads(info_file.read_text())
            finished = info_file.stat().st_mtime
        except (OSError, ValueError):
            return False
        self.record_finished(project, build_id, Status(record_status(info)), info, now=finished)
        return True

    # --- batches (mistryd/batches.py) ---------------------------------------------------------

    def create_batch(self, batch_id: str, jobs: list[BatchJobRow], now: float | None = None) -> None:
        """A new batch and its jobs, in one transaction (the opaque params kept apart)."""
        now = time.time() if now is None else now
        db = self._conn()
        with _transaction(db):
            db.execute("INSERT INTO batches (id, created_at) VALUES (?, ?)", (batch_id, now))
            db.executemany(
                """INSERT INTO batch_jobs (batch, name, position, project, build_id, grp, params,
                                           opaque, rebuild, needs, state, reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [(batch_id, j.name, j.position, j.project, j.build_id, j.group,
                  json.dumps(public_params(j.params)),
                  json.dumps({k: v for k, v in j.opaque.items() if is_opaque(k)}),
                  int(j.rebuild), json.dumps(list(j.needs)), j.state, j.reason) for j in jobs])

    def batch(self, batch_id: str) -> BatchRow | None:
        row = self._conn().execute("SELECT * FROM batches WHERE id=?", (batch_id,)).fetchone()
        return None if row is None else BatchRow(row["id"], row["created_at"], row["finished_at"])

    def batch_jobs(self, batch_id: str) -> list[BatchJobRow]:
        """A batch's jobs in the order they were given, each with its build's row now."""
        cur = self._conn().execute(
            """SELECT j.*, b.status AS build_status, b.reason AS build_reason,
                      b.started_at AS build_started_at, b.finished_at AS build_finished_at
               FROM batch_jobs j LEFT JOIN builds b ON b.project = j.project AND b.id = j.build_id
               WHERE j.batch = ? ORDER BY j.position""", (batch_id,))
        return [BatchJobRow.from_sql(r) for r in cur.fetchall()]

    def open_batches(self) -> list[str]:
        """The batches with jobs that have not ended yet, oldest first."""
        return [r[0] for r in self._conn().execute(
            "SELECT id FROM batches WHERE finished_at IS NULL ORDER BY created_at")]

    def claim_batch_job(self, batch_id: str, name: str, now: float) -> bool:
        """Mark a waiting job submitted (before its submission: whoever marks it submits it);
        False when it is not waiting (another process claimed it first)."""
        cur = self._conn().execute(
            "UPDATE batch_jobs SET state='submitted', submitted_at=? "
            "WHERE batch=? AND name=? AND state='waiting'", (now, batch_id, name))
        return cur.rowcount == 1

    def unclaim_batch_job(self, batch_id: str, name: str, submitted_at: float) -> bool:
        """A claimed job back to waiting (its submission was refused for now, or it never
        happened), unless it was claimed again since."""
        cur = self._conn().execute(
            "UPDATE batch_jobs SET state='waiting', submitted_at=NULL "
            "WHERE batch=? AND name=? AND state='submitted' AND submitted_at=?",
            (batch_id, name, submitted_at))
        return cur.rowcount == 1

    def batch_job_submitted(self, batch_id: str, name: str, build_id: str, state: str) -> None:
        """The build a claimed job became (`state`: submitted, or succeeded for a cache hit); its
        opaque params are in the builds table now, so they go from here."""
        self._conn().execute(
            "UPDATE batch_jobs SET build_id=?, opaque='{}', state=? "
            "WHERE batch=? AND name=? AND state='submitted'", (build_id, state, batch_id, name))

    def end_batch_job(self, batch_id: str, name: str, state: str, reason: str,
                      was: str) -> bool:
        """Record how a job ended (a Status value, or skipped) if it is still in state `was`."""
        cur = self._conn().execute(
            "UPDATE batch_jobs SET state=?, reason=?, opaque='{}' "
            "WHERE batch=? AND name=? AND state=?", (state, reason, batch_id, name, was))
        return cur.rowcount == 1

    def close_batch(self, batch_id: str, now: float | None = None) -> bool:
        """Every job of the batch has ended; False when it was closed already."""
        cur = self._conn().execute(
            "UPDATE batches SET finished_at=? WHERE id=? AND finished_at IS NULL",
            (time.time() if now is None else now, batch_id))
        return cur.rowcount == 1
