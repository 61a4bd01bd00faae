import threading

from mistryd.logs import LiveLog, follow, sse_event, sse_stream


def test_sse_event_framing_splits_lines():
    assert sse_event("a\nb", event="end", event_id=3) == "id: 3\nevent: end\ndata: a\ndata: b\n\n"


def test_follower_gets_every_line_from_the_start_even_when_late(tmp_path):
    live = LiveLog()
    live.open(tmp_path / "out.log")
    live.line("one")
    live.line("two")
    seen = []
    done = threading.Event()

    def reader():
        for item in follow(live, None, 0, heartbeat=5):
            if item is not None:
                seen.append(item)
        done.set()

    t = threading.Thread(target=reader)
    t.start()
    live.line("three")
    live.write(b"no newline at the end")
    live.finish({"status": "succeeded"})
    assert done.wait(5)
    assert [text for _, text in seen] == ["one", "two", "three", "no newline at the end"]
    # offsets resume exactly after a line
    offset_after_two = seen[1][0]
    replay = [text for _, text in follow(None, tmp_path / "out.log", offset_after_two)]
    assert replay == ["three", "no newline at the end"]


def test_finished_stream_replays_and_ends(tmp_path):
    path = tmp_path / "out.log"
    path.write_text("x\ny\n")
    events = "".join(sse_stream(None, path, 0, {"status": "failed"}))
    assert "data: x\n" in events and "data: y\n" in events
    assert events.endswith('event: end\ndata: {"status": "failed"}\n\n')


class CountingLog(LiveLog):
    """A LiveLog that counts how often a follower waits on it."""

    waits = 0

    def wait(self, seen_size: int, timeout: float) -> None:
        self.waits += 1
        super().wait(seen_size, timeout)


def test_a_partial_last_line_does_not_make_the_follower_spin(tmp_path):
    """Docker splits lines longer than 16 KiB, so logs often end in a partial line for a while:
    the follower must sleep until more comes, not re-read in a loop (it did, at 100% CPU)."""
    import threading
    import time

    live = CountingLog()
    live.open(tmp_path / "out.log")
    live.write(b"a whole line\npartial")
    got = []
    follower = threading.Thread(target=lambda: got.extend(follow(live, None, 0, heartbeat=5)))
    follower.start()
    time.sleep(0.5)
    assert live.waits <= 2, f"the follower woke {live.waits} times in 0.5 s with nothing new"
    live.write(b" line\n")
    live.finish()
    follower.join(5)
    assert [text for _, text in got if text is not None] == ["a whole line", "partial line"]


def test_a_line_longer_than_a_read_comes_in_parts(tmp_path):
    from mistryd.logs import read_lines

    path = tmp_path / "out.log"
    path.write_bytes(b"x" * 100 + b"\n")
    with open(path, "rb") as f:
        lines, offset = read_lines(f, 0, limit=40)
        assert lines == [(40, "x" * 40)] and offset == 40


def test_a_follower_arriving_after_the_publish_gets_the_whole_log(tmp_path):
    """The build's folder moved from pending/ to ready/ between the page and its stream: the
    stream reads the log at its new place instead of ending empty."""
    pending, ready = tmp_path / "pending" / "b", tmp_path / "ready" / "b"
    pending.mkdir(parents=True)
    ready.parent.mkdir()
    live = LiveLog()
    live.open(pending / "out.log")
    live.write(b"one\ntwo\n")
    pending.rename(ready)
    live.write(b"three\n")  # written through the open file, after the move
    live.finish({"status": "succeeded"})
    got = [text for _, text in follow(live, ready / "out.log", 0) if text is not None]
    assert got == ["one", "two", "three"]
