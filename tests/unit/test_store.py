"""The SQLite index: state moves, the trigger-kept counts, the typed queries, and the schema's
migrations from every earlier shape of the index."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from mistryd import store as store_module
from mistryd.layout import Layout, write_json_atomically
from mistryd.store import MIGRATIONS, IndexTooNew, Status, Store


def test_counts_follow_every_move(tmp_path):
    store = Store(Layout(tmp_path))
    store.record_queued("p", "a", "", {}, False)
    store.record_queued("p", "b", "", {}, False)
    store.record_queued("q", "c", "g", {}, False)
    store.record_running("p", "a")
    store.record_finished("p", "a", Status.SUCCEEDED, {"ExitCode": 0})
    store.transition("p", "b", Status.ABANDONED, "gone")
    store.record_queued("p", "a", "", {}, True)  # a rebuild queues it again
    counts = store.status_counts()
    assert counts["queued"] == 2 and counts["abandoned"] == 1 and counts["succeeded"] == 0
    assert store.status_counts("p") == {**{s.value: 0 for s in Status}, "queued": 1,
                                        "abandoned": 1}
    store.forget("q", "c")
    assert store.status_counts()["queued"] == 1
    # the same figures as counting the rows
    for status in Status:
        assert store.status_counts()[status.value] == store.count(status=status)


def test_interruptions_count_crashes_in_a_row_not_runs(tmp_path):
    """A build rebuilt twice and then cut short once has been interrupted once, not three
    times (it was abandoned after its first real crash)."""
    store = Store(Layout(tmp_path))
    for _ in range(3):  # built, then rebuilt twice: three runs, no interruption
        store.record_queued("p", "a", "", {}, True)
        store.record_running("p", "a")
        store.record_finished("p", "a", Status.SUCCEEDED, {"ExitCode": 0})
    store.record_queued("p", "a", "", {}, True)
    store.record_running("p", "a")
    assert store.count_interruption("p", "a") == 1
    assert store.count_interruption("p", "a") == 2
    store.record_finished("p", "a", Status.SUCCEEDED, {"ExitCode": 0})
    assert store.get("p", "a").interruptions == 0


def test_opaque_params_are_kept_apart_and_dropped_at_the_end(tmp_path):
    store = Store(Layout(tmp_path))
    store.record_queued("p", "a", "", {"env": "prod", "_token": "secret"}, False)
    row = store.get("p", "a")
    assert row.params == {"env": "prod"} and row.opaque == {"_token": "secret"}
    store.record_finished("p", "a", Status.SUCCEEDED,
                          {"ExitCode": 0, "Params": {"env": "prod", "_token": "secret"}})
    row = store.get("p", "a")
    assert row.opaque == {} and row.info["Params"] == {"env": "prod"}
    assert "secret" not in str(store._conn().execute("SELECT * FROM builds").fetchall())


# --- the typed queries ---------------------------------------------------------------------------


@pytest.fixture
def history(tmp_path) -> Store:
    """Builds of p (groups '', g1, g2) and q, queued at t=1..8, in every kind of state."""
    store = Store(Layout(tmp_path))
    finished = [("p", "a1", "", Status.SUCCEEDED), ("p", "a2", "g1", Status.FAILED),
                ("q", "b1", "", Status.SUCCEEDED), ("p", "a3", "g1", Status.SUCCEEDED),
                ("p", "a4", "g2", Status.TIMED_OUT)]
    for t, (project, build_id, group, status) in enumerate(finished, start=1):
        store.record_queued(project, build_id, group, {}, False, now=t)
        store.record_finished(project, build_id, status, {"Group": group}, now=t + 0.5)
    store.record_queued("p", "a5", "g2", {}, False, now=6)
    store.record_running("p", "a5", now=6.5)
    store.record_queued("q", "b2", "", {}, False, now=7)
    store.record_queued("p", "c9", "g1", {}, False, now=8)
    return store


def ids(rows) -> list[str]:
    return [r.id for r in rows]


def test_get_and_newest(history):
    assert history.get("p", "a2").status is Status.FAILED and history.get("p", "a2").group == "g1"
    assert history.get("p", "b1") is None  # b1 is q's
    assert ids(history.newest()) == ["c9", "b2", "a5", "a4", "a3", "b1", "a2", "a1"]
    assert ids(history.newest(limit=2)) == ["c9", "b2"]
    assert history.newest(limit=0) == []


def test_history_filters_and_pages(history):
    assert ids(history.history(project="p")) == ["c9", "a5", "a4", "a3", "a2", "a1"]
    assert ids(history.history(project="p", group="g1")) == ["c9", "a3", "a2"]
    assert ids(history.history(project="p", status=Status.SUCCEEDED)) == ["a3", "a1"]
    assert ids(history.history(status=Status.SUCCEEDED)) == ["a3", "b1", "a1"]
    assert ids(history.history(project="p", status=Status.SUCCEEDED, group="g1")) == ["a3"]
    assert ids(history.history(group="")) == ids(history.newest())  # '' is "any group"
    assert ids(history.history(project="p", limit=2, offset=2)) == ["a4", "a3"]
    assert ids(history.history(project="p", limit=2, offset=6)) == []
    assert history.history(project="nope") == []


def test_counts_match_the_filters(history):
    assert history.count() == 8
    assert history.count("p") == 6 and history.count("q") == 2 and history.count("nope") == 0
    assert history.count(status=Status.QUEUED) == 2
    assert history.count("p", Status.SUCCEEDED, "g1") == 1
    assert history.count(project="p", group="g2") == 2


def test_recent_finished_skips_what_is_queued_or_running(history):
    assert ids(history.recent_finished(10)) == ["a4", "a3", "b1", "a2", "a1"]
    assert ids(history.recent_finished(2, project="p")) == ["a4", "a3"]


def test_latest_per_group_is_one_row_per_group_by_name(history):
    rows = history.latest_per_group("p", limit=50)
    assert [(r.group, r.id) for r in rows] == [("", "a1"), ("g1", "c9"), ("g2", "a5")]
    assert len(history.latest_per_group("p", limit=2)) == 2
    assert history.latest_per_group("nope", limit=50) == []


def test_unfinished_is_oldest_first(history):
    assert ids(history.unfinished()) == ["a5", "b2", "c9"]


def test_find_by_prefix_crosses_projects(history):
    assert sorted(ids(history.find_by_prefix("b"))) == ["b1", "b2"]
    assert ids(history.find_by_prefix("a", limit=1)) == ["a5"]  # newest first
    assert history.find_by_prefix("z") == []


def test_status_counts_per_project(history):
    assert history.status_counts("q") == {**{s.value: 0 for s in Status}, "succeeded": 1,
                                          "queued": 1}
    assert sum(history.status_counts().values()) == history.count()


# --- migrations ----------------------------------------------------------------------------------

# The index as mistryd left it before its schema had a version, SQL as written by those versions.
BUILDS_TABLE = """
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
"""
GROUP_INDEX = "CREATE INDEX IF NOT EXISTS builds_by_group ON builds (project, grp, queued_at DESC);"
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
OPAQUE = "ALTER TABLE builds ADD COLUMN opaque TEXT NOT NULL DEFAULT '{}';"
GC_SIZES = "ALTER TABLE builds ADD COLUMN size_bytes INTEGER; ALTER TABLE builds ADD COLUMN size_of REAL;"

OLD_SCHEMAS = {
    "first (8a1ea00)": BUILDS_TABLE,
    "before the counts (2c8f315)": BUILDS_TABLE + GROUP_INDEX,
    "base (33018ad)": BUILDS_TABLE + GROUP_INDEX + COUNTS,
    "base, after a GC pass": BUILDS_TABLE + GROUP_INDEX + COUNTS + GC_SIZES,
    "today (c2f3dee)": BUILDS_TABLE + GROUP_INDEX + COUNTS + OPAQUE,
    "today, after a GC pass": BUILDS_TABLE + GROUP_INDEX + COUNTS + OPAQUE + GC_SIZES,
}

OLD_ROWS = """
INSERT INTO builds (project, id, grp, params, status, exit_code, reason, rebuild, attempts,
                    queued_at, started_at, finished_at, last_used, info) VALUES
  ('p', 'done', 'g', '{"v": "1"}', 'succeeded', 0, '', 0, 1, 10.0, 11.0, 12.0, 50.0,
   '{"ID": "done", "Project": "p", "Group": "g", "ExitCode": 0, "Params": {"v": "1"}}'),
  ('p', 'broke', '', '{}', 'failed', 2, 'exit code 2', 0, 1, 20.0, 21.0, 22.0, 22.0,
   '{"ID": "broke", "Project": "p", "ExitCode": 2, "Params": {}}'),
  ('q', 'waiting', '', '{"v": "2"}', 'queued', NULL, '', 1, 0, 30.0, NULL, NULL, 30.0, NULL),
  ('q', 'cut', 'g', '{}', 'running', NULL, '', 0, 2, 40.0, 41.0, NULL, 40.0, NULL);
"""


def old_index(layout: Layout, schema: str) -> None:
    """An index as an earlier mistryd left it, with rows (and no user_version)."""
    layout.state_dir().mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(layout.state_dir() / "index.sqlite")
    db.executescript(schema + OLD_ROWS)
    db.close()


def shape(path) -> tuple:
    """What a schema is made of: its tables, indexes and triggers, and the builds columns."""
    db = sqlite3.connect(path)
    try:
        objects = sorted(db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE "
                                    "'sqlite_autoindex%'").fetchall())
        columns = sorted((r[1], r[2], r[3], r[4]) for r in db.execute("PRAGMA table_info(builds)"))
        return objects, columns, db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize("schema", OLD_SCHEMAS.values(), ids=OLD_SCHEMAS.keys())
def test_an_older_index_is_migrated_with_its_rows(tmp_path, schema):
    old_index(Layout(tmp_path / "old"), schema)
    store = Store(Layout(tmp_path / "old"))
    assert shape(store.path) == shape(Store(Layout(tmp_path / "fresh")).path)
    assert shape(store.path)[2] == len(MIGRATIONS)
    assert ids(store.newest()) == ["cut", "waiting", "broke", "done"]
    done = store.get("p", "done")
    assert (done.status, done.group, done.params, done.exit_code, done.last_used) == \
        (Status.SUCCEEDED, "g", {"v": "1"}, 0, 50.0)
    assert done.info["ID"] == "done" and done.opaque == {}
    assert store.get("p", "broke").reason == "exit code 2"
    waiting = store.get("q", "waiting")
    assert waiting.status is Status.QUEUED and waiting.rebuild and waiting.params == {"v": "2"}
    assert store.get("q", "cut").interruptions == 2
    assert store.status_counts() == {**{s.value: 0 for s in Status}, "succeeded": 1, "failed": 1,
                                     "queued": 1, "running": 1}
    # the migrated index works as a new one: counts kept by triggers, GC's sizes recorded
    store.record_finished("q", "cut", Status.SUCCEEDED, {"Group": "g"}, now=60.0)
    assert store.status_counts("q")["running"] == 0 and store.status_counts("q")["succeeded"] == 1
    store.record_size("q", "cut", 4096, 60.0)
    assert {r["id"]: r["size_bytes"] for r in store.gc_rows()}["cut"] == 4096
    assert ids(store.unfinished()) == ["waiting"]


def test_a_fresh_index_runs_every_migration_and_indexes_the_folders(tmp_path):
    layout = Layout(tmp_path)
    info = {"ID": "x1", "Project": "p", "Group": "", "ExitCode": 0, "Status": "succeeded",
            "Params": {}}
    folder = layout.ready("p", "x1")
    folder.mkdir(parents=True)
    write_json_atomically(folder / "build_info.json", info)
    store = Store(layout)
    assert shape(store.path)[2] == len(MIGRATIONS)
    assert ids(store.newest()) == ["x1"] and store.status_counts()["succeeded"] == 1
    Store(layout)  # opening it again changes nothing
    assert shape(store.path)[2] == len(MIGRATIONS) and store.count() == 1


def test_a_migration_that_fails_changes_nothing(tmp_path, monkeypatch):
    """Each migration and the version it brings commit together or not at all."""
    layout = Layout(tmp_path)
    Store(layout).record_queued("p", "a", "", {}, False)

    def half_done(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE builds ADD COLUMN half TEXT")
        db.execute("DELETE FROM builds")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, half_done))
    with pytest.raises(sqlite3.OperationalError):
        Store(layout)
    monkeypatch.undo()
    objects, columns, version = shape(layout.state_dir() / "index.sqlite")
    assert version == len(MIGRATIONS) and "half" not in [c[0] for c in columns]
    assert ids(Store(layout).newest()) == ["a"]


def test_a_migration_may_be_a_script(tmp_path, monkeypatch):
    layout = Layout(tmp_path)
    Store(layout)
    script = ("CREATE TABLE notes (text TEXT); -- a comment; with a ';'\n"
              "CREATE TRIGGER noted AFTER INSERT ON builds BEGIN\n"
              "    INSERT INTO notes VALUES ('new; build');\nEND;")
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, script))
    store = Store(layout)
    store.record_queued("p", "a", "", {}, False)
    assert store._conn().execute("SELECT text FROM notes").fetchall()[0][0] == "new; build"
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1


def too_new_index(layout: Layout) -> int:
    store = Store(layout)
    store.record_queued("p", "a", "", {}, False)
    newer = len(MIGRATIONS) + 3
    store._conn().execute(f"PRAGMA user_version = {newer}")
    store._conn().close()
    return newer


def test_an_index_newer_than_the_code_is_refused_untouched(tmp_path):
    layout = Layout(tmp_path)
    newer = too_new_index(layout)
    path = layout.state_dir() / "index.sqlite"
    before = shape(path)
    with pytest.raises(IndexTooNew) as refused:
        Store(layout)
    assert refused.value.message == (
        f"the index {path} is at schema version {newer}, newer than this mistryd knows (up to "
        f"{len(MIGRATIONS)}): run the newer mistryd, or move the file aside and it is rebuilt "
        "from the build folders (queued jobs are then forgotten)")
    with pytest.raises(IndexTooNew):
        Store.read_gc_rows(str(path))
    assert shape(path) == before


def test_the_server_does_not_start_on_a_newer_index(tmp_path):
    (tmp_path / "projects").mkdir()
    build_path = tmp_path / "builds"
    newer = too_new_index(Layout(build_path))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"projects_path": "projects", "build_path": "builds",
                                  "addr": "127.0.0.1:0"}))
    out = subprocess.run([sys.executable, "-m", "mistryd.cli", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    index = build_path / ".mistryd" / "index.sqlite"
    assert out.stderr.startswith(f"mistryd: the index {index} is at schema version {newer},")
    assert out.stderr.strip().count("\n") == 0, out.stderr  # one line, no traceback


def test_gc_reads_an_unmigrated_index_without_writing_it(tmp_path):
    """`mistryd gc` on a full disk reads the index of an older mistryd as it is: no size
    columns yet (they read as NULL), and not a byte changed."""
    layout = Layout(tmp_path)
    old_index(layout, OLD_SCHEMAS["base (33018ad)"])
    path = layout.state_dir() / "index.sqlite"
    before = path.read_bytes()
    rows = Store.read_gc_rows(str(path))
    assert sorted((r["id"], r["size_bytes"], r["size_of"]) for r in rows) == \
        [("broke", None, None), ("cut", None, None), ("done", None, None), ("waiting", None, None)]
    assert path.read_bytes() == before and shape(path)[2] == 0
