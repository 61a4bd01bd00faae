"""out.log stays the plain text upstream's readers know; out.log.marks beside it says which
stream each write came from, and when (the web view's stderr marks, image fold and timestamps)."""

from __future__ import annotations

import time

import pytest

from mistryd.logs import Marks, marks_path

pytestmark = pytest.mark.docker


def test_marks_say_stream_and_time_of_every_part_of_the_log(start_server):
    rs = start_server(projects=("web-colours",))
    before = time.time() * 1000
    info = rs.build("web-colours", params={"ticks": "0"})
    log = rs.build_path / "web-colours" / "ready" / info["ID"] / "out.log"
    text = log.read_bytes()
    assert b"a line on stderr\n" in text and b"tick" not in text
    assert text.decode() == info["ContainerStdouterr"]  # what GET /job readers get: the same
    wanted = {b"mistryd: building image": "i", b"preparing the image for web-colours": "i",
              b"a line on stderr": "e", b"\x1b[1;32mcoloured green": "o",
              b"web-colours finished": "o"}
    at = sorted((text.index(needle), stream) for needle, stream in wanted.items())
    with open(marks_path(log), "rb") as f:
        found = Marks(f).at([offset for offset, _ in at])
    assert [m[0] if m else None for m in found] == [stream for _, stream in at]
    assert all(m is not None and before - 1000 <= m[1] <= time.time() * 1000 for m in found)
    # every byte of the log has a mark, and the last mark ends where the log ends
    raw = marks_path(log).read_bytes()
    assert len(raw) % 29 == 0 and int(raw[-29:].split()[0]) == len(text)
