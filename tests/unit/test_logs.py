"""The log stream's promise, window by window: a follower gets every line from its offset, then
exactly one `end`, sent only once the log has finished. The builder's steps (open the log in
pending/, write, publish the folder to ready/, finish) are driven by hand on real files, and the
streams are stepped one event at a time, so every window is hit on purpose, not by timing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mistryd.layout import publish
from mistryd.logs import LiveLog, end_event_data, follow, read_lines, sse_event, sse_stream

IDLE = 0.01  # the keep-alive interval of stepped streams: a keep-alive means "caught up, waiting"


class HandDrivenBuild:
    """One build's folder and LiveLog, moved through the builder's steps in its order."""

    def __init__(self, root: Path, name: str = "b"):
        self.pending = root / "pending" / name
        self.ready = root / "ready" / name
        self.live = LiveLog()
        self.record: dict | None = None  # the build's record, as the JSON job view reads it
        self.end_calls: list[bool] = []  # for each end(): whether the log had finished

    def start(self) -> None:
        self.pending.mkdir(parents=True)
        self.live.open(self.pending / "out.log")

    def publish(self) -> None:
        (self.pending / "build_info.json").write_text("{}")
        publish(self.pending, self.ready)

    def finish(self, status: str = "succeeded", exit_code: int = 0) -> None:
        self.record = {"Status": status, "ExitCode": exit_code, "Path": "/srv/b"}
        self.live.finish({"status": status, "exit_code": exit_code})

    def end(self) -> dict:
        self.end_calls.append(self.live.finished)
        return end_event_data(self.record, self.live.end_payload.get("status"),
                              self.live.end_payload.get("exit_code"))

    def follower(self, offset: int = 0, live: bool = True) -> Iterator[str]:
        """A stream as log_stream makes it: the LiveLog while the build is in flight, the
        folder in ready/ alone once it is not."""
        return sse_stream(self.live if live else None, self.ready / "out.log", offset, self.end,
                          heartbeat=IDLE)


def parse(chunks: list[str]) -> list[tuple[str, str | None, str]]:
    """[(event, id, data)] of SSE chunks; keep-alives and the retry hint left out."""
    events = []
    for chunk in chunks:
        if chunk.startswith((":", "retry:")):
            continue
        event, event_id, data = "message", None, []
        for line in chunk.rstrip("\n").split("\n"):
            key, _, value = line.partition(": ")
            if key == "event":
                event = value
            elif key == "id":
                event_id = value
            elif key == "data":
                data.append(value)
        events.append((event, event_id, "\n".join(data)))
    return events


def step(stream: Iterator[str]) -> tuple[list[tuple[str, str | None, str]], bool]:
    """The events `stream` has now: up to its first keep-alive (it has caught up and waits)
    or its end. Returns them and whether the stream ended."""
    chunks = []
    for chunk in stream:
        if chunk.startswith(": keep-alive"):
            return parse(chunks), False
        chunks.append(chunk)
    return parse(chunks), True


def lines(events) -> list[str]:
    return [data for event, _, data in events if event == "message"]


def ends(events) -> list[dict]:
    return [json.loads(data) for event, _, data in events if event == "end"]


def test_sse_event_framing_splits_lines():
    assert sse_event("a\nb", event="end", event_id=3) == "id: 3\nevent: end\ndata: a\ndata: b\n\n"


def test_end_payload_keeps_the_old_fields_and_adds_the_record():
    info = {"ID": "b", "Status": "failed", "ExitCode": 2}
    assert end_event_data(info, "failed", 2) == {"status": "failed", "exit_code": 2, "info": info}


def test_a_follower_from_before_the_start_to_the_end(tmp_path):
    build = HandDrivenBuild(tmp_path)
    stream = build.follower()  # queued: no log yet
    assert step(stream) == ([], False)
    build.start()
    build.live.line("one")
    build.live.line("two")
    got, ended = step(stream)
    assert lines(got) == ["one", "two"] and not ended
    build.live.line("three")
    build.publish()
    got, ended = step(stream)
    assert lines(got) == ["three"] and not ended  # published, not finished: no end yet
    build.finish()
    got, ended = step(stream)
    assert ended and got == [("end", None, json.dumps(build.end()))]
    assert build.end_calls[0] is True  # asked for after the finish


def test_a_follower_arriving_between_publish_and_finish_waits_for_the_end(tmp_path):
    """The issue: the build's folder is in ready/, the index row is being written, the log has
    not finished. The follower gets the whole log, and the end only after the finish."""
    build = HandDrivenBuild(tmp_path)
    build.start()
    build.live.write(b"one\ntwo\n")
    build.publish()
    assert not build.pending.exists()
    stream = build.follower()
    got, ended = step(stream)
    assert lines(got) == ["one", "two"] and not ended
    assert build.end_calls == []
    build.live.write(b"three\n")  # through the writer's open file, after the move
    build.finish("failed", 3)
    got, ended = step(stream)
    assert lines(got) == ["three"] and ended
    assert ends(got) == [{"status": "failed", "exit_code": 3, "info": build.record}]
    assert build.end_calls == [True]


@pytest.mark.parametrize("live", [True, False], ids=["flight-still-held", "flight-dropped"])
def test_a_follower_arriving_after_the_finish_gets_everything_then_one_end(tmp_path, live):
    build = HandDrivenBuild(tmp_path)
    build.start()
    build.live.write(b"one\ntwo\nno newline at the end")
    build.publish()
    build.finish()
    got, ended = step(build.follower(live=live))
    assert ended
    assert lines(got) == ["one", "two", "no newline at the end"]
    assert [e for e, _, _ in got] == ["message"] * 3 + ["end"]
    assert ends(got)[0]["info"] == build.record


def test_resuming_from_an_offset_gets_exactly_the_lines_after_it(tmp_path):
    build = HandDrivenBuild(tmp_path)
    build.start()
    build.live.write(b"one\ntwo\n")
    first, _ = step(build.follower())
    after_one = int(first[0][1])
    build.live.write(b"three\n")
    resumed = build.follower(offset=after_one)  # a reconnect while it runs
    got, ended = step(resumed)
    assert lines(got) == ["two", "three"] and not ended
    build.publish()
    build.finish()
    got, ended = step(resumed)
    assert got == [("end", None, json.dumps(build.end()))] and ended
    # and again once it has finished, from the last line's offset: nothing but the end
    last = int(first[1][1])
    for live in (True, False):
        got, ended = step(build.follower(offset=last, live=live))
        assert lines(got) == ["three"] and len(ends(got)) == 1 and ended


def test_after_a_rebuilds_swap_the_follower_reads_the_new_log_not_the_old(tmp_path):
    """A rebuild exchanges the folders: the pending name then holds the previous build until it
    is removed. A follower arriving then must not take that log for this build's."""
    old = HandDrivenBuild(tmp_path)
    old.start()
    old.live.write(b"old log\n")
    old.publish()
    old.finish()
    build = HandDrivenBuild(tmp_path)
    build.start()
    build.live.write(b"new log\n")
    # the exchange as renameat2(RENAME_EXCHANGE) leaves it (publish may fall back to moves)
    aside = tmp_path / "aside"
    build.ready.rename(aside)
    build.pending.rename(build.ready)
    aside.rename(build.pending)
    assert (build.pending / "out.log").read_text() == "old log\n"
    build.finish()
    got, ended = step(build.follower())
    assert lines(got) == ["new log"] and ended


def test_a_log_removed_before_the_finish_ends_no_stream_early(tmp_path):
    """A finish that fails removes the half-made folder before it records the failure: a
    follower that arrives in between waits for the record, then gets its end."""
    build = HandDrivenBuild(tmp_path)
    build.start()
    build.live.write(b"one\n")
    early = build.follower()
    got, _ = step(early)
    assert lines(got) == ["one"]
    (build.pending / "out.log").unlink()
    (build.pending / "out.log.marks").unlink()
    build.pending.rmdir()
    late = build.follower()
    assert step(late) == ([], False)
    build.finish("failed", -999)
    got, ended = step(late)
    assert ended and ends(got) == [build.end()]
    got, ended = step(early)  # it had the file open: nothing was lost for it
    assert ended and lines(got) == [] and len(ends(got)) == 1


def test_a_build_cancelled_while_queued_ends_with_no_lines(tmp_path):
    build = HandDrivenBuild(tmp_path)
    stream = build.follower()
    assert step(stream) == ([], False)
    build.finish("cancelled", -999)
    got, ended = step(stream)
    assert ended and ends(got) == [{"status": "cancelled", "exit_code": -999,
                                    "info": build.record}]


def test_a_live_follower_in_a_thread_gets_every_line(tmp_path):
    """The same promise with the writer and the follower racing for real."""
    build = HandDrivenBuild(tmp_path)
    build.start()
    got: list[str] = []
    follower = threading.Thread(target=lambda: got.extend(sse_stream(
        build.live, build.ready / "out.log", 0, build.end)))
    follower.start()
    for i in range(2000):
        build.live.line(f"line {i}")
    build.publish()
    build.finish()
    follower.join(30)
    assert not follower.is_alive()
    events = parse(got)
    assert lines(events) == [f"line {i}" for i in range(2000)]
    assert [e for e, _, _ in events].count("end") == 1 and events[-1][0] == "end"


class CountingLog(LiveLog):
    """A LiveLog that counts how often a follower waits on it, and stops a spinning one."""

    waits = 0

    def wait(self, seen_size: int, timeout: float, gone=None) -> None:
        self.waits += 1
        assert self.waits <= 3, "the follower waits again and again with nothing new"
        super().wait(seen_size, timeout, gone)


def test_a_partial_last_line_does_not_make_the_follower_spin(tmp_path):
    """Docker splits lines longer than 16 KiB, so logs often end in a partial line for a while:
    the follower must sleep until more comes, not re-read in a loop (it did, at 100% CPU)."""
    live = CountingLog()
    live.open(tmp_path / "out.log")
    live.write(b"a whole line\npartial")
    stream = follow(live, None, 0, heartbeat=IDLE)
    assert next(stream)[1] == "a whole line"
    assert next(stream) is None  # one wait, then a keep-alive: nothing new
    assert live.waits == 1
    live.write(b" line\n")
    live.finish()
    assert [text for _, text in stream] == ["partial line"]


def test_a_line_longer_than_a_read_comes_in_parts(tmp_path):
    path = tmp_path / "out.log"
    path.write_bytes(b"x" * 100 + b"\n")
    with open(path, "rb") as f:
        lines, offset = read_lines(f, 0, limit=40)
        assert lines == [(40, "x" * 40)] and offset == 40


def test_a_follower_whose_reader_hung_up_returns_when_woken_not_at_the_heartbeat(tmp_path):
    """The server wakes a log's followers when a reader's connection closes (LiveLog.wake):
    that follower ends then, with no periodic look at its connection; the others go on."""
    live = LiveLog()
    live.open(tmp_path / "out.log")
    hung_up = threading.Event()
    asked = threading.Event()
    ended: list[str] = []

    def leaving_gone() -> bool:
        asked.set()
        return hung_up.is_set()

    def reader(name: str, gone) -> None:
        for _ in follow(live, None, 0, heartbeat=600, gone=gone):
            pass
        ended.append(name)

    leaving = threading.Thread(target=reader, args=("leaving", leaving_gone))
    staying = threading.Thread(target=reader, args=("staying", lambda: False))
    leaving.start()
    staying.start()
    assert asked.wait(30)  # the leaving follower looked, under the log's lock, and found no reason
    with live._cond:  # held once that follower waits (its wait let go of the lock)
        hung_up.set()
    live.wake()
    leaving.join(30)
    assert ended == ["leaving"] and staying.is_alive()
    live.finish()
    staying.join(30)
    assert ended == ["leaving", "staying"]
