"""Build logs: one plain-text out.log per build, followed live from any offset.

A running build's log has a LiveLog: the writer appends to the file and wakes the followers; each
follower reads the file at its own offset, so a slow viewer never stalls the build or other viewers,
and a viewer that connects late still gets every line from the start.

The promise to every follower, whenever it connects (before the build starts, while it runs,
between the publish of its folder and the log's finish, after the finish, resuming from an
offset): every line from its offset to the end of the log, then exactly one `end` event, sent only
once the log has finished, whose data says how the build ended (`end_event_data`).

Beside the log, `out.log.marks` says where each write came from and when (see `Marks`): the log
itself stays the plain text upstream's readers expect, and the web view marks stderr lines, folds
the image build and shows a time per line from the marks.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

# Where a write to the log came from (one letter in out.log.marks)
STDOUT = "o"  # the build container's stdout
STDERR = "e"  # the build container's stderr
IMAGE = "i"  # the image build: docker's output and mistryd's lines about the image
MISTRYD = "m"  # mistryd's own notes (a cancel, a refusal, ...)
STREAMS = frozenset({STDOUT, STDERR, IMAGE, MISTRYD})


class LogSink(Protocol):
    """Where docker's output goes: a build's LiveLog, or the terminal of `mistryd rebuild`."""

    def write(self, data: bytes, stream: str = STDOUT) -> None: ...

    def line(self, text: str, stream: str = MISTRYD) -> None: ...


MARKS_SUFFIX = ".marks"
MARK_SIZE = 29  # one record: "%012d %s %013d\n", the log's size after the write, stream, epoch ms


def marks_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + MARKS_SUFFIX)


def mark_record(end: int, stream: str, ms: int) -> bytes:
    return b"%012d %s %013d\n" % (end, stream.encode(), ms)


class Marks:
    """Reads out.log.marks: fixed-size records, one per write, in the order of the log, so the
    write holding any byte is found by a binary search (a 100,000-line log costs no more)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        # where the last lookup ended (index, the record there, the end of the one before): a
        # follower asks for offsets in order, and scans on from here instead of searching
        self._hint: tuple[int, tuple[int, str, int], int] | None = None

    def close(self) -> None:
        self._f.close()

    def _count(self) -> int:
        return os.fstat(self._f.fileno()).st_size // MARK_SIZE

    def _record(self, i: int) -> tuple[int, str, int] | None:
        self._f.seek(i * MARK_SIZE)
        raw = self._f.read(MARK_SIZE)
        try:
            end, stream, ms = raw.split()
            return int(end), stream.decode(), int(ms)
        except ValueError:  # a torn record (a full disk): no mark for this part of the log
            return None

    def at(self, offsets: list[int]) -> list[tuple[str, int] | None]:
        """(stream, epoch ms) of the write holding the byte at each of the ascending `offsets`;
        None where no record covers it (a log from before the marks)."""
        out: list[tuple[str, int] | None] = []
        count = self._count()
        if not offsets or count == 0:
            return [None] * len(offsets)
        rec: tuple[int, str, int] | None
        if self._hint is not None and self._hint[2] <= offsets[0]:
            i, rec, before = self._hint
        else:
            lo, hi = 0, count  # the first record whose end is past offsets[0]
            while lo < hi:
                mid = (lo + hi) // 2
                found = self._record(mid)
                if found is not None and found[0] <= offsets[0]:
                    lo = mid + 1
                else:
                    hi = mid
            i = lo
            rec = self._record(i) if i < count else None
            before = 0
        for offset in offsets:
            while rec is not None and rec[0] <= offset and i + 1 < count:
                i, before = i + 1, rec[0]
                rec = self._record(i)
            out.append((rec[1], rec[2]) if rec is not None and rec[0] > offset else None)
        self._hint = (i, rec, before) if rec is not None else None
        return out


TAIL_LOOK = 0.1  # how often a log written by another process is looked at while followed


class LiveLog:
    """A running build's log. In the process that builds it, the builder writes it here and
    wakes the followers; in another process (a builder process builds, the API tier serves the
    followers) it follows the file the builder writes (`follow_file`)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._locate: Callable[[], tuple[Path, tuple[int, int]] | None] | None = None
        self.path: Path | None = None
        self._file = None
        # (st_dev, st_ino) of the log file: a follower that opens it by name after the finish
        # moved the folder checks it has this build's log (a rebuild swaps the old folder into
        # pending/, so the name pending/<id>/out.log then holds the previous build's log)
        self.identity: tuple[int, int] | None = None
        self.size = 0
        self.finished = False
        self.end_payload: dict = {}
        self._marks: BinaryIO | None = None
        self.marks_identity: tuple[int, int] | None = None
        self._looker = False  # a follower is looking at the file for the others (follow_file)

    def open(self, path: Path) -> None:
        with self._cond:
            self._file = open(path, "ab", buffering=0)
            st = os.fstat(self._file.fileno())
            self.identity = (st.st_dev, st.st_ino)
            self.size = self._file.tell()
            try:
                self._marks = open(marks_path(path), "ab", buffering=0)
                st = os.fstat(self._marks.fileno())
                self.marks_identity = (st.st_dev, st.st_ino)
            except OSError:
                self._marks = None  # the log goes on without marks
            self.path = path
            self._cond.notify_all()

    def write(self, data: bytes, stream: str = STDOUT) -> None:
        if not data:
            return
        with self._cond:
            if self._file is None:
                return
            # the mark first: a follower that reads a byte of the log finds its mark
            self._mark(self.size + len(data), stream)
            try:
                self._file.write(data)
            except OSError:  # a full disk: the build goes on; its log is cut short here
                self._file.close()
                self._file = None
                return
            self.size += len(data)
            self._cond.notify_all()

    def _mark(self, end: int, stream: str) -> None:
        if self._marks is None:
            return
        try:
            self._marks.write(mark_record(end, stream, int(time.time() * 1000)))
        except OSError:
            self._marks.close()
            self._marks = None

    def line(self, text: str, stream: str = MISTRYD) -> None:
        self.write((text.rstrip("\n") + "\n").encode("utf-8", "replace"), stream)

    def finish(self, end_payload: dict | None = None) -> None:
        """The log is whole and the build's record is written (the builder calls this last)."""
        with self._cond:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._marks is not None:
                self._marks.close()
                self._marks = None
            self.finished = True
            self.end_payload = end_payload or {}
            self._cond.notify_all()

    def follow_file(self, locate: Callable[[], tuple[Path, tuple[int, int]] | None]) -> None:
        """Another process writes this log: `locate` says where its file is and which file it
        is ((st_dev, st_ino)), or None until the builder has opened it. Followers then look at
        the file every TAIL_LOOK seconds instead of being woken by each write; `finish` still
        wakes them at once."""
        self._locate = locate

    def refresh(self) -> None:
        """Look at a log written by another process now (path, size); nothing for our own."""
        with self._cond:
            self._look()

    def _look(self) -> None:
        if self._locate is None or self.finished:
            return
        if self.path is None:
            found = self._locate()
            if found is None:
                return
            self.path, self.identity = found
        try:
            st = os.stat(self.path)
        except OSError:
            return  # published meanwhile: the finish comes next
        if (st.st_dev, st.st_ino) == self.identity:
            self.size = st.st_size

    def wake(self) -> None:
        """Have every waiting follower look again now (a reader has hung up: its `gone` says so)."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, seen_size: int, timeout: float, gone: Callable[[], bool] | None = None) -> None:
        """Block until the log grows past `seen_size`, it finishes, `gone()` says the reader has
        hung up (asked on entry and whenever `wake` is called), or `timeout` passes."""
        def more() -> bool:
            self._look()
            return (self.finished or (self.path is not None and self.size > seen_size)
                    or (gone is not None and gone()))

        with self._cond:
            if self._locate is None:
                self._cond.wait_for(more, timeout=timeout)
                return
            # one follower at a time looks at the file every TAIL_LOOK seconds and wakes the
            # others when it grew: hundreds of followers of one build cost one look, not hundreds
            deadline = time.monotonic() + timeout
            while not more() and (left := deadline - time.monotonic()) > 0:
                if self._looker:
                    self._cond.wait(left)
                    continue
                self._looker = True
                try:
                    self._cond.wait(min(TAIL_LOOK, left))
                    before = (self.size, self.path)
                    self._look()
                    if (self.size, self.path) != before:
                        self._cond.notify_all()
                finally:
                    self._looker = False
                    self._cond.notify()  # another follower takes the looking over


def end_event_data(info: dict | None, status: str | None, exit_code: int | None) -> dict:
    """The data of the `end` event that closes every log stream (docs/contract.md):
    `status` and `exit_code` (what clients read from the start), and `info`, the final BuildInfo
    as `GET /job/<project>/<id>` (JSON) answers it to the same reader, without
    `ContainerStdouterr` (the follower has just received the whole log). `info` is null only when
    the build's record is gone (removed while the stream ran)."""
    return {"status": status, "exit_code": exit_code, "info": info}


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


def follow(live: LiveLog | None, path: Path | None, offset: int, heartbeat: float = 15.0,
           gone: Callable[[], bool] | None = None) -> Iterator[tuple[int, str] | None]:
    """Yield (offset after the line, line) from `offset` until the build ends, and None as a
    keep-alive tick while nothing happens. With no LiveLog the build is finished: replay `path`;
    with one, `path` is where its log will be once the build is published. With a LiveLog this
    returns only once the log has finished, after its last line.
    The file is opened once and read through that descriptor, so the rename of the build folder
    from pending/ to ready/ at the finish does not disturb a follower. `gone()` says the reader
    has hung up, asked whenever the follower waits: whoever notices the hang-up calls
    `live.wake()`, and this returns then instead of at the next keep-alive."""
    f: BinaryIO | None = None
    try:
        while True:
            # read after looking: a log seen finished here has all its lines in the file
            finished = live is None or live.finished
            if f is None:
                f = open_log(live, path)
                if f is None and finished:
                    return  # no log: never started (cancelled while queued), or removed
            # what the log held before this read: when the read ends in a partial line, wait
            # for more than that (waiting for more than `offset` would return at once, for ever)
            seen = live.size if live is not None else 0
            if f is not None:
                lines, offset = read_lines(f, offset)
                if lines:
                    yield from lines
                    continue
            if finished:
                assert f is not None
                f.seek(offset)
                rest = f.read()
                if rest:  # a last line without a newline
                    yield offset + len(rest), rest.decode("utf-8", "replace")
                return
            assert live is not None
            seen = max(seen, offset)
            live.wait(seen, timeout=heartbeat, gone=gone)
            if gone is not None and gone():
                return
            if not live.finished and (live.path is None or live.size <= seen):
                yield None
    finally:
        if f is not None:
            f.close()


def open_log(live: LiveLog | None, path: Path | None) -> BinaryIO | None:
    """The build's log file, open for reading. A finished build's is at `path`. A live one's is
    where its LiveLog opened it, or at `path` once the folder is published: the first of the two
    that is this build's file (not yet opened: None; a rebuild's swap can leave the previous
    build's log under the pending name)."""
    if live is None:
        return _open_matching([path], None)
    live.refresh()  # written by a builder process: where its file is by now
    if live.path is None:
        return None
    return _open_matching([live.path, path], live.identity)


def open_marks(live: LiveLog | None, path: Path) -> Marks | None:
    """The marks beside the log at `path` (a finished build's) or beside a live build's log,
    opened as `open_log` opens the log; None when there are none."""
    if live is None:
        f = _open_matching([marks_path(path)], None)
    elif live.path is None or live.marks_identity is None:
        return None
    else:
        f = _open_matching([marks_path(live.path), marks_path(path)], live.marks_identity)
    return Marks(f) if f is not None else None


def _open_matching(paths: list[Path | None], identity: tuple[int, int] | None) -> BinaryIO | None:
    for candidate in paths:
        if candidate is None:
            continue
        try:
            f = open(candidate, "rb")
        except (FileNotFoundError, NotADirectoryError):
            continue
        st = os.fstat(f.fileno())
        if identity is None or (st.st_dev, st.st_ino) == identity:
            return f
        f.close()
    return None


_SGR = re.compile("\x1b\\[[0-9;:]*m")  # a colour or text attribute


def last_rewrite(line: str) -> str:
    """A carriage return ends an SSE line, so none may be sent: of a line that rewrites itself
    (`10%\\r55%\\rdone`) the part a terminal shows last, after the colour codes of the parts it
    writes over (as `mistry logs` shows a finished build's record); a CRLF's \\r rewrites
    nothing."""
    line = line.rstrip("\r")
    if "\r" not in line:
        return line
    over, _, last = line.rpartition("\r")
    return "".join(_SGR.findall(over)) + last


def sse_event(data: str, event: str | None = None, event_id: int | str | None = None) -> str:
    out = []
    if event_id is not None:
        out.append(f"id: {event_id}")
    if event:
        out.append(f"event: {event}")
    for part in data.split("\n"):
        out.append(f"data: {last_rewrite(part)}")
    return "\n".join(out) + "\n\n"


LineRenderer = Callable[[int, int, str], str]  # (line start, line end, text) -> event data


def sse_stream(live: LiveLog | None, path: Path | None, offset: int, end: Callable[[], dict],
               heartbeat: float = 15.0, gone: Callable[[], bool] | None = None,
               render: LineRenderer | None = None) -> Iterator[str]:
    """The log as Server-Sent Events from `offset`, then one `end` event whose data `end()` gives
    (asked once, after the last line: for a live build, once its record is written). Each line's
    data is its text, or what `render` makes of it (the web view's lines with their marks)."""
    yield "retry: 1000\n\n"
    start = offset
    for item in follow(live, path, offset, heartbeat=heartbeat, gone=gone):
        if item is None:
            yield ": keep-alive\n\n"
            continue
        pos, text = item
        yield sse_event(text if render is None else render(start, pos, text), event_id=pos)
        start = pos
    if gone is not None and gone():
        return
    yield sse_event(json.dumps(end()), event="end")
