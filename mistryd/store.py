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
from dataclasses import dataclass
from enum import StrEnum

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

    @property
    def finished(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    project     TEXT NOT NULL,
    id          TEXT NOT NULL,
    grp         TEXT NOT NULL DEFAULT '',
    params      TEXT NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL,
    exit_code   INTEGER,
    reason      TEXT NOT NULL DEFAULT '',
    rebuild     INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
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
COUNTS = (
    """
CREATE TABLE build_counts (
    project TEXT NOT NULL,
    status  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (project, status)
)
""",
    """
INSERT INTO build_counts SELECT project, status, COUNT(*) FROM builds GROUP BY project, status
""",
    """
CREATE TRIGGER build_counts_insert AFTER INSERT ON builds BEGIN
    INSERT INTO build_counts VALUES (NEW.project, NEW.status, 1)
        ON CONFLICT (project, status) DO UPDATE SET n = n + 1;
END
""",
    """
CREATE TRIGGER build_counts_delete AFTER DELETE ON builds BEGIN
    UPDATE build_counts SET n = n - 1 WHERE project = OLD.project AND status = OLD.status;
END
""",
    """
CREATE TRIGGER build_counts_update AFTER UPDATE OF status ON builds
    WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE build_counts SET n = n - 1 WHERE project = OLD.project AND status = OLD.status;
    INSERT INTO build_counts VALUES (NEW.project, NEW.status, 1)
        ON CONFLICT (project, status) DO UPDATE SET n = n + 1;
END
""",
)


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
    attempts: int
    queued_at: float
    started_at: float | None
    finished_at: float | None
    last_used: float
    info: dict | None

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> BuildRow:
        return cls(
            project=row["project"], id=row["id"], group=row["grp"],
            params=json.loads(row["params"]), status=Status(row["status"]),
            exit_code=row["exit_code"], reason=row["reason"], rebuild=bool(row["rebuild"]),
            attempts=row["attempts"], queued_at=row["queued_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], last_used=row["last_used"],
            info=json.loads(row["info"]) if row["info"] else None,
        )

    @property
    def state(self) -> str:
        """Upstream's two states."""
        return "ready" if self.status.finished else "pending"


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
        db = self._conn()
        db.executescript(SCHEMA)
        self._add_counts(db)
        if fresh:
            self.reindex_from_disk()

    @staticmethod
    def _add_counts(db: sqlite3.Connection) -> None:
        """Add the counts to an index made before they existed (once, whoever opens it first)."""
        exists = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='build_counts'"
        if db.execute(exists).fetchone():
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            if not db.execute(exists).fetchone():
                for statement in COUNTS:
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    # --- writes -------------------------------------------------------------------------------

    def record_queued(self, project: str, build_id: str, group: str, params: dict,
                      rebuild: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._conn().execute(
            """INSERT INTO builds (project, id, grp, params, status, rebuild, queued_at, last_used)
               VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)
               ON CONFLICT (project, id) DO UPDATE SET
                 status='queued', params=excluded.params, rebuild=excluded.rebuild,
                 queued_at=excluded.queued_at, started_at=NULL, finished_at=NULL,
                 exit_code=NULL, reason='', last_used=excluded.last_used""",
            (project, build_id, group, json.dumps(params, sort_keys=True), int(rebuild), now, now),
        )

    def record_running(self, project: str, build_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._conn().execute(
            "UPDATE builds SET status='running', started_at=?, attempts=attempts+1 "
            "WHERE project=? AND id=?", (now, project, build_id),
        )

    def record_finished(self, project: str, build_id: str, status: Status, info: dict,
                        reason: str = "", now: float | None = None) -> None:
        now = time.time() if now is None else now
        slim = {k: v for k, v in info.items() if k not in ("ContainerStdouterr",)}
        self._conn().execute(
            """INSERT INTO builds (project, id, grp, params, status, exit_code, reason, queued_at,
                                   started_at, finished_at, last_used, info, attempts)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
               ON CONFLICT (project, id) DO UPDATE SET
                 status=excluded.status, exit_code=excluded.exit_code, reason=excluded.reason,
                 finished_at=excluded.finished_at, last_used=excluded.last_used,
                 info=excluded.info""",
            (project, build_id, info.get("Group", ""), json.dumps(info.get("Params", {})),
             status.value, info.get("ExitCode"), reason, now, now, now, now, json.dumps(slim)),
        )

    def touch(self, project: str, build_id: str, now: float | None = None) -> None:
        """A cache hit counts as use (for least-recently-used eviction). Hits are the hot path,
        so uses are gathered in memory and written in one transaction at most every
        USAGE_FLUSH_SECONDS (and before garbage collection reads them)."""
        now = time.time() if now is None else now
        with self._usage_lock:
            self._usage[(project, build_id)] = now
            due = now - self._usage_flushed >= USAGE_FLUSH_SECONDS
        if due:
            self.flush_usage()

    def flush_usage(self) -> None:
        with self._usage_lock:
            batch, self._usage = self._usage, {}
            self._usage_flushed = time.time()
        if batch:
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(
                    "UPDATE builds SET last_used=MAX(last_used, ?) WHERE project=? AND id=?",
                    [(t, p, i) for (p, i), t in batch.items()])

    def transition(self, project: str, build_id: str, to: Status, reason: str,
                   now: float | None = None) -> bool:
        """Move an unfinished build to a final state; False when it had already ended."""
        cur = self._conn().execute(
            "UPDATE builds SET status=?, reason=?, finished_at=? "
            "WHERE project=? AND id=? AND status IN ('queued', 'running')",
            (to.value, reason, time.time() if now is None else now, project, build_id))
        return cur.rowcount == 1

    def unfinished(self) -> list[BuildRow]:
        """Builds left queued or running (by a crash or a stop), oldest first."""
        return self.query("status IN ('queued', 'running')", order="queued_at ASC")

    def forget(self, project: str, build_id: str) -> None:
        self._conn().execute("DELETE FROM builds WHERE project=? AND id=?", (project, build_id))

    # --- reads --------------------------------------------------------------------------------

    def get(self, project: str, build_id: str) -> BuildRow | None:
        rows = self.query("project=? AND id=?", (project, build_id))
        return rows[0] if rows else None

    def query(self, where: str = "1", args: tuple = (), limit: int = -1, offset: int = 0,
              order: str = "queued_at DESC") -> list[BuildRow]:
        cur = self._conn().execute(
            f"SELECT * FROM builds WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [BuildRow.from_sql(r) for r in cur.fetchall()]

    def count(self, where: str = "1", args: tuple = ()) -> int:
        return self._conn().execute(f"SELECT COUNT(*) FROM builds WHERE {where}", args).fetchone()[0]

    def status_counts(self, project: str = "") -> dict[str, int]:
        """Builds per status (every status, zero or not), from the trigger-kept counts."""
        where, args = ("WHERE project = ?", (project,)) if project else ("", ())
        rows = self._conn().execute(
            f"SELECT status, SUM(n) FROM build_counts {where} GROUP BY status", args).fetchall()
        counts = {status.value: 0 for status in Status}
        counts.update({status: n for status, n in rows if status in counts})
        return counts

    def find_by_prefix(self, prefix: str, limit: int = 20) -> list[BuildRow]:
        return self.query("id >= ? AND id < ?", (prefix, prefix + "\uffff"), limit=limit)

    # --- garbage collection (mistryd/gc.py) ---------------------------------------------------

    def ensure_size_columns(self) -> None:
        """Add the columns GC keeps sizes in; idempotent, so an older index gains them."""
        have = {r["name"] for r in self._conn().execute("PRAGMA table_info(builds)")}
        for column, kind in (("size_bytes", "INTEGER"), ("size_of", "REAL")):
            if column not in have:
                try:
                    self._conn().execute(f"ALTER TABLE builds ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as e:  # another process added it meanwhile
                    if "duplicate column" not in str(e):
                        raise

    def gc_rows(self) -> list[sqlite3.Row]:
        self.flush_usage()
        return self._conn().execute(
            "SELECT project, id, grp, status, last_used, finished_at, size_bytes, size_of "
            "FROM builds").fetchall()

    def record_size(self, project: str, build_id: str, size: int, finished_at: float) -> None:
        """The size of a finished build's folder; `size_of` says which finish it measured (a
        rebuild finishes again and is measured again)."""
        self._conn().execute(
            "UPDATE builds SET size_bytes=?, size_of=? WHERE project=? AND id=? AND finished_at=?",
            (size, finished_at, project, build_id, finished_at))

    def forget_unused(self, project: str, build_id: str, last_used: float) -> bool:
        """Forget a finished build unless it was used or queued again after `last_used`;
        whoever deletes the row owns the eviction (a server and `mistryd gc` may race)."""
        cur = self._conn().execute(
            "DELETE FROM builds WHERE project=? AND id=? AND last_used<=? "
            "AND status NOT IN ('queued', 'running')", (project, build_id, last_used))
        return cur.rowcount == 1

    # --- recovery -----------------------------------------------------------------------------

    def reindex_from_disk(self) -> int:
        """Rebuild the index from the ready folders (a lost or new index)."""
        count = 0
        root = self.layout.root
        for info_file in root.glob(f"*/ready/*/{INFO_FILE}"):
            try:
                info = json.loads(info_file.read_text())
            except (OSError, ValueError):
                continue
            project, build_id = info_file.parent.parent.parent.name, info_file.parent.name
            status = Status(info.get("Status") or ("succeeded" if info.get("ExitCode") == 0
                                                   else "failed"))
            started = info_file.stat().st_mtime
            self.record_finished(project, build_id, status, info, now=started)
            count += 1
        return count
