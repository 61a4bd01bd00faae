"""The SQLite index: state moves and the trigger-kept counts."""

from mistryd.layout import Layout
from mistryd.store import Status, Store


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
        assert store.status_counts()[status.value] == store.count("status = ?", (status.value,))


def test_counts_of_an_index_made_before_they_existed(tmp_path):
    store = Store(Layout(tmp_path))
    store.record_finished("p", "a", Status.FAILED, {"ExitCode": 1})
    db = store._conn()
    db.executescript("DROP TRIGGER build_counts_insert; DROP TRIGGER build_counts_delete;"
                     "DROP TRIGGER build_counts_update; DROP TABLE build_counts;")
    again = Store(Layout(tmp_path))
    assert again.status_counts()["failed"] == 1


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
