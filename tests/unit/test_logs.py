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
