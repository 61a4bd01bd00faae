"""Build logs: one plain-text out.log per build, followed live from any offset.

A running build's log has a LiveLog: the writer appends to the file and wakes the followers; each
follower reads the file at its own offset, so a slow viewer never stalls the build or other viewers,
and a viewer that connects late still gets every line from the start.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class LiveLog:
    def __init__(self):
        self._cond = threading.Condition()
        self.path: Path | None = None
        self._file = None
        self.size = 0
        self.finished = False
        self.end_payload: dict = {}

    def open(self, path: Path) -> None:
        with self._cond:
            self.path = path
            self._file = open(path, "ab", buffering=0)
            self.size = self._file.tell()
            self._cond.notify_all()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._cond:
            if self._file is None:
                return
            try:
                self._file.write(data)
            except OSError:  # a full disk: the build goes on; its log is cut short here
                self._file.close()
                self._file = None
                return
            self.size += len(data)
            self._cond.notify_all()

    def line(self, text: str) -> None:
        self.write((text.rstrip("\n") + "\n").encode("utf-8", "replace"))

    def finish(self, end_payload: dict | None = None) -> None:
        with self._cond:
            if self._file is not None:
                self._file.close()
                self._file = None
            self.finished = True
            self.end_payload = end_payload or {}
            self._cond.notify_all()

    def wait(self, seen_size: int, timeout: float) -> None:
        """Block until the log grows past `seen_size`, it finishes, or `timeout` passes."""
        with self._cond:
            self._cond.wait_for(
                lambda: self.finished or (self.path is not None and self.size > seen_size),
                timeout=timeout,
            )


def read_lines(f: BinaryIO, offset: int, limit: int = 1 << 20) -> tuple[list[tuple[int, str]], int]:
    """Whole lines of the open file `f` from `offset` on: [(offset after the line, text)], and the
    new offset. A trailing partial line waits for its newline."""
    f.seek(offset)
    chunk = f.read(limit)
    lines = []
    start = 0
    while (nl := chunk.find(b"\n", start)) >= 0:
        lines.append((offset + nl + 1, chunk[start:nl].decode("utf-8", "replace")))
        start = nl + 1
    if start == 0 and len(chunk) == limit:  # one line longer than `limit`: send it in parts
        return [(offset + limit, chunk.decode("utf-8", "replace"))], offset + limit
    return lines, offset + start


def follow(live: LiveLog | None, path: Path | None, offset: int,
           heartbeat: float = 15.0) -> Iterator[tuple[int, str] | None]:
    """Yield (offset after the line, line) from `offset` until the build ends, and None as a
    keep-alive tick while nothing happens. With no LiveLog the build is finished: replay `path`;
    with one, `path` is where its log will be once the build is published.
    The file is opened once and read through that descriptor, so the rename of the build folder
    from pending/ to ready/ at the finish does not disturb a follower."""
    f: BinaryIO | None = None
    try:
        while True:
            finished = live is None or live.finished
            if f is None and (live is None or live.path is not None):
                f = _open_first(path if live is None else live.path, path)
                if f is None:
                    return  # the build and its log are gone
            # what the log held before this read: when the read ends in a partial line, wait
            # for more than that (waiting for more than `offset` would return at once, for ever)
            seen = live.size if live is not None else 0
            if f is not None:
                lines, offset = read_lines(f, offset)
                if lines:
                    yield from lines
                    continue
            if finished:
                if f is not None:
                    f.seek(offset)
                    rest = f.read()
                    if rest:  # a last line without a newline
                        yield offset + len(rest), rest.decode("utf-8", "replace")
                return
            assert live is not None
            seen = max(seen, offset)
            live.wait(seen, timeout=heartbeat)
            if not live.finished and (live.path is None or live.size <= seen):
                yield None
    finally:
        if f is not None:
            f.close()


def _open_first(*paths: Path | None) -> BinaryIO | None:
    """The first of `paths` that opens. A follower that arrives just after the finish moved the
    build folder from pending/ to ready/ finds the log at its new place (it used to end the
    stream at once, and a page opened while the build ran then showed a stale log as final)."""
    for path in paths:
        if path is None:
            continue
        try:
            return open(path, "rb")
        except FileNotFoundError:
            continue
    return None


def sse_event(data: str, event: str | None = None, event_id: int | str | None = None) -> str:
    out = []
    if event_id is not None:
        out.append(f"id: {event_id}")
    if event:
        out.append(f"event: {event}")
    for part in data.replace("\r", "").split("\n"):
        out.append(f"data: {part}")
    return "\n".join(out) + "\n\n"


def sse_stream(live: LiveLog | None, path: Path | None, offset: int,
               end_payload: dict | None = None) -> Iterator[str]:
    yield "retry: 1000\n\n"
    for item in follow(live, path, offset):
        if item is None:
            yield ": keep-alive\n\n"
            continue
        pos, text = item
        yield sse_event(text, event_id=pos)
    payload = (live.end_payload if live is not None else None) or end_payload or {}
    yield sse_event(json.dumps(payload), event="end")
