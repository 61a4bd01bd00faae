"""The web view's log lines (colours, marks, the image fold) and the charts' data, without a server."""

from __future__ import annotations

import json
import sqlite3

from mistryd import history
from mistryd.layout import Layout
from mistryd.logs import IMAGE, STDERR, STDOUT, LiveLog, Marks, marks_path, open_marks
from mistryd.store import Status, Store
from mistryd.web import logview
from mistryd.web.views import _log_tail, _with_marks


def test_colours_are_classes_and_text_stays_text():
    ansi = logview.AnsiLines()
    assert ansi.html("\x1b[1;32mgreen\x1b[0m <b>&") == \
        '<span class="ansi1 ansi32">green</span> &lt;b&gt;&amp;'
    assert ansi.html("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_a_colour_left_open_carries_over_the_line_end():
    ansi = logview.AnsiLines()
    ansi.html("\x1b[31mred starts")
    assert ansi.html("still red\x1b[0m") == '<span class="ansi31">still red</span>'
    assert ansi.html("plain again") == "plain again"


def test_what_a_terminal_would_act_on_is_dropped():
    ansi = logview.AnsiLines()
    assert ansi.html("\x1b]8;;javascript:alert(1)\x1b\\click\x1b]8;;\x1b\\") == "click"
    assert ansi.html("a\x1b]0;title\x07b\x07\x00c") == "abc"
    assert ansi.html("\x1b[2K\x1b[1Adone") == "done"
    assert ansi.html("progress 10%\rprogress 100%\r") == "progress 100%"


def test_the_stylesheet_is_the_librarys(tmp_path):
    from pathlib import Path

    import mistryd.web

    css = Path(mistryd.web.__file__).parent / "static" / "ansi.css"
    assert css.read_text() == logview.stylesheet()


def test_marks_find_the_write_of_every_byte(tmp_path):
    live = LiveLog()
    live.open(tmp_path / "out.log")
    live.write(b"image step\n", IMAGE)
    live.write(b"out one\nout ", STDOUT)
    live.write(b"err\n", STDERR)
    live.line("mistryd: done")
    live.finish()
    text = (tmp_path / "out.log").read_bytes()
    with open(marks_path(tmp_path / "out.log"), "rb") as f:
        marks = Marks(f)
        found = marks.at([0, 10, 11, 19, 23, 27, len(text) - 1, len(text)])
    assert [m[0] if m else None for m in found] == ["i", "i", "o", "o", "e", "m", "m", None]
    # in order, one call after another (a follower), as one call
    with open(marks_path(tmp_path / "out.log"), "rb") as f:
        marks = Marks(f)
        assert [marks.at([o])[0][0] for o in (0, 11, 23, 27)] == ["i", "o", "e", "m"]


def test_the_tail_folds_the_image_build_and_marks_stderr(tmp_path):
    live = LiveLog()
    live.open(tmp_path / "out.log")
    live.line("mistryd: building image x", IMAGE)
    live.write(b"Step 1/2 : FROM debian\n", IMAGE)
    live.write(b"\x1b[31mred\x1b[0m\n", STDOUT)
    live.write(b"oops\n", STDERR)
    live.finish()
    tail = _with_marks(_log_tail(open((tmp_path / "out.log"), "rb"), whole_lines_only=False),
                       open_marks(None, tmp_path / "out.log"))
    assert [line.html for line in tail.image] == ["mistryd: building image x",
                                                 "Step 1/2 : FROM debian"]
    assert [(str(line.html), line.stream) for line in tail.lines] == [
        ('<span class="ansi31">red</span>', "o"), ("oops", "e")]
    assert all(line.ms > 0 for line in tail.lines)
    assert tail.lines[-1].end == (tmp_path / "out.log").stat().st_size


def test_the_page_stream_renders_lines_with_their_marks(tmp_path):
    live = LiveLog()
    live.open(tmp_path / "out.log")
    live.write(b"\x1b[32mok\x1b[0m\n", STDOUT)
    live.write(b"bad\n", STDERR)
    render = logview.PageRenderer(live, tmp_path / "out.log")
    first = json.loads(render(0, 12, "\x1b[32mok\x1b[0m"))
    second = json.loads(render(12, 16, "bad"))
    render.close()
    assert first["h"] == '<span class="ansi32">ok</span>' and first["s"] == "o"
    assert second == {"h": "bad", "s": "e", "t": second["t"]} and second["t"] > 0


def test_a_log_without_marks_renders_plain(tmp_path):
    (tmp_path / "out.log").write_bytes(b"old\nlog\n")
    assert open_marks(None, tmp_path / "out.log") is None
    tail = _with_marks(_log_tail(open(tmp_path / "out.log", "rb"), whole_lines_only=False), None)
    assert [(str(x.html), x.stream, x.ms) for x in tail.lines] == [("old", "", 0), ("log", "", 0)]


def make_store(tmp_path) -> Store:
    return Store(Layout(tmp_path / "builds"))


def test_project_chart_one_series_per_outcome(tmp_path):
    store = make_store(tmp_path)
    for i, status in enumerate([Status.SUCCEEDED, Status.FAILED, Status.CANCELLED]):
        store.record_finished("p", f"{i:064x}", status,
                              {"Duration": (i + 1) * 1_000_000_000, "Status": status.value},
                              now=1000.0 + i)
    chart = history.project_chart(store, "p")
    assert chart["statuses"] == ["succeeded", "failed", "cancelled"]
    assert chart["succeeded"] == [1.0, None, None]
    assert chart["failed"] == [None, 2.0, None]
    assert chart["other"] == [None, None, 3.0]


def test_timeline_counts_changes_across_restarts(tmp_path):
    store = make_store(tmp_path)
    now = 100_000.0
    use = history.CacheUse
    first, second = history.Sampler(), history.Sampler()
    first.sample(store, use(hits=0, started=1), queued=3, running=1, now=now - 3000)
    first.sample(store, use(hits=3, started=2), queued=1, running=1, now=now - 2000)
    # a restart: the new process's counters start at 0 again
    second.sample(store, use(hits=1, started=1), queued=0, running=0, now=now - 100)
    t = history.timeline(store, now, current=second.current(use(hits=2, started=1), 0, 0, now),
                         span=4000, buckets=4)
    # 4 buckets of 1000 s: [-4000,-3000) [-3000,-2000) [-2000,-1000) [-1000,0]
    assert t["requests"] == [0, 1, 4, 3]
    assert t["hit_rate"] == [None, 0.0, 75.0, 66.7]
    assert t["queued"] == [None, 3, 1, 0]


def test_samples_are_kept_a_while_then_dropped(tmp_path):
    store = make_store(tmp_path)
    store.record_sample(1.0, "a", 0, 0, 0, 0, 0, keep_seconds=10)
    store.record_sample(20.0, "a", 1, 0, 0, 0, 0, keep_seconds=10)
    assert [r["at"] for r in store.samples_since(0)] == [20.0]
    assert isinstance(store.samples_since(0)[0], sqlite3.Row)


def test_the_sampler_is_due_once_a_minute():
    sampler = history.Sampler()
    assert sampler.due(1000.0) and not sampler.due(1001.0) and not sampler.due(1059.0)
    assert sampler.due(1060.0)
