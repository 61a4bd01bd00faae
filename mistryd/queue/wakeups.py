"""Waking the threads of this process that wait for something (a job's end, a cancel, new work),
and ringing the other processes that share a queue on this machine.

Every process that uses the embedded queue owns one FIFO in the queue's folder and a thread that
reads it; ringing writes one line to every other process's FIFO. A line only says "look again":
the waiter reads the truth from the index, so a line that is lost (a reader that fell 64 KiB
behind) delays a waiter until its next safety look, never misleads it.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("mistryd")


class Wakeups:
    """Threads of this process waiting for a topic; `ring(topic)` wakes those waiting for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}
        self.closed = False

    @contextmanager
    def listening(self, topic: str) -> Iterator[threading.Event]:
        """An event set whenever `topic` rings (or the wakeups close) while the block runs.
        Register first, then look at the state: a ring in between is never missed."""
        event = threading.Event()
        with self._lock:
            if self.closed:
                event.set()
            self._waiting.setdefault(topic, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiting = self._waiting.get(topic)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiting[topic]

    def ring(self, topic: str) -> None:
        with self._lock:
            for event in self._waiting.get(topic, ()):
                event.set()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            for events in self._waiting.values():
                for event in events:
                    event.set()


class Bell:
    """This process's FIFO in `folder` (read by a thread that hands each line to `heard`), and
    `ring`, which writes a line to every other process's FIFO there. A FIFO whose readers are
    all gone (a crashed process) is removed by the first ring that finds it so."""

    def __init__(self, folder: Path, heard: Callable[[str], None]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.name = f"{os.getpid()}-{secrets.token_hex(8)}.fifo"
        self._path = folder / self.name
        # made under another name and opened before it is renamed into sight: a ring must
        # never see it without a reader (it would take it for a dead process's and remove it)
        making = folder / f"{self.name}.new"
        os.mkfifo(making, 0o600)
        # read-write, so the read never sees end-of-file when the last writer closes
        self._fd = os.open(making, os.O_RDWR | os.O_CLOEXEC)
        os.rename(making, self._path)
        self._heard = heard
        self._closed = False
        self._thread = threading.Thread(target=self._listen, name="mistryd-queue-bell",
                                        daemon=True)
        self._thread.start()

    def ring(self, line: str) -> None:
        ring_others(self.folder, line, mine=self.name)

    def _listen(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:
                return
            if self._closed:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line:
                    try:
                        self._heard(line.decode("utf-8", "replace"))
                    except Exception:  # noqa: BLE001 - the bell must keep listening
                        log.exception("mistryd: queue: a wakeup failed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _unlink(self._path)
        os.write(self._fd, b"\n")  # wakes the reader, which sees _closed and ends
        self._thread.join(5)
        os.close(self._fd)


def ring_others(folder: Path, line: str, mine: str | None = None) -> None:
    """Write a line to the FIFO of every process listening in `folder` (but `mine`)."""
    assert "\n" not in line  # noqa: S101 - one line is one wakeup
    data = (line + "\n").encode()
    assert len(data) <= 4096, "longer writes to a FIFO are not atomic"  # noqa: S101
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        if name == mine or not name.endswith(".fifo"):
            continue
        _write(folder / name, data)


def _write(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO:  # nobody reads it: its process is gone
            _unlink(path)
        elif e.errno != errno.ENOENT:
            log.warning("mistryd: queue: cannot ring %s: %s", path, e)
        return
    try:
        os.write(fd, data)
    except BlockingIOError:
        pass  # that reader is 64 KiB behind: its waiters look again by themselves
    except OSError as e:
        log.warning("mistryd: queue: cannot ring %s: %s", path, e)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


T = TypeVar("T")
SAFETY_LOOK = 5.0  # seconds: the longest a waiter sleeps before it looks again without a wakeup


def earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def sleep_until_woken(woken: threading.Event, until: float | None) -> bool:
    """Wait for a wakeup until `until` (monotonic; None: no end), at most SAFETY_LOOK at a time
    (a wakeup lost on the way is made up for by looking again); False when `until` has passed."""
    remaining = SAFETY_LOOK if until is None else until - time.monotonic()
    if remaining <= 0:
        return False
    woken.wait(min(remaining, SAFETY_LOOK))
    return True


def look_until(listening: AbstractContextManager[threading.Event], look: Callable[[], T | None],
               deadline: float | None, closed: Callable[[], bool]) -> T | None:
    """`look()` until it answers something, looking again at each wakeup of `listening` (and
    every SAFETY_LOOK seconds); None once `deadline` (monotonic; None: none) has passed or the
    wakeups are closed. A backend's wait: listen first, then look, so no wakeup falls between."""
    with listening as woken:
        while True:
            woken.clear()
            found = look()
            if found is not None:
                return found
            if closed() or not sleep_until_woken(woken, deadline):
                return None
