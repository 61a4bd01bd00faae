"""mistryd/ordered_output.py without Docker: the FIFOs read by one thread in the order written,
the static shell found and copied, and the end of a run that never opened its output."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from mistryd.logs import STDERR, STDOUT
from mistryd.ordered_output import BUSYBOX, OrderedOutput, _copied, _static_elf


class Collected:
    """A LogSink that keeps what it is given, and tells a waiter when it has more."""

    def __init__(self) -> None:
        self.writes: list[tuple[bytes, str]] = []
        self._more = threading.Condition()

    def write(self, data: bytes, stream: str = STDOUT) -> None:
        with self._more:
            self.writes.append((data, stream))
            self._more.notify_all()

    def line(self, text: str, stream: str = STDOUT) -> None:
        self.write(text.encode() + b"\n", stream)

    def lines(self) -> list[tuple[str, str]]:
        """(line, stream), whatever pieces the reads made."""
        with self._more:
            writes = list(self.writes)
        out: list[tuple[str, str]] = []
        for data, stream in writes:
            out += [(line, stream) for line in data.decode().splitlines()]
        return out

    def wait_for_lines(self, count: int) -> None:
        with self._more:
            assert self._more.wait_for(lambda: sum(d.count(b"\n") for d, _ in self.writes)
                                       >= count, timeout=60), self.writes


@pytest.fixture
def output(tmp_path):
    (tmp_path / "build").mkdir()
    sink = Collected()
    out = OrderedOutput(tmp_path / "build" / ".output", sink, BUSYBOX)
    yield out, sink
    out.close()


class HeldAfterStderr(Collected):
    """Holds the reader in its write of stderr data until `go_on` is released: the writer writes
    the next pair meanwhile, as a build does while mistryd is still busy with the last line."""

    def __init__(self) -> None:
        super().__init__()
        self.go_on = threading.Semaphore(0)

    def write(self, data: bytes, stream: str = STDOUT) -> None:
        super().write(data, stream)
        if stream == STDERR:
            assert self.go_on.acquire(timeout=60)


def test_switches_of_stream_written_back_to_back_keep_their_order(tmp_path):
    """Each pair written back to back, stdout then stderr; the next pair once the reader has
    both, while it is still in its handling of the last stderr line (so a reader that read on
    in the stream it was at would take `err N+1` ahead of `out N+1`)."""
    (tmp_path / "build").mkdir()
    sink = HeldAfterStderr()
    out = OrderedOutput(tmp_path / "build" / ".output", sink, BUSYBOX)
    out.start()
    pairs = 15
    writer_out = os.open(out.folder / "out", os.O_WRONLY)
    writer_err = os.open(out.folder / "err", os.O_WRONLY)
    try:
        for i in range(1, pairs + 1):
            os.write(writer_out, b"out %d\n" % i)
            os.write(writer_err, b"err %d\n" % i)
            if i > 1:
                sink.go_on.release()  # the reader leaves its handling of `err i-1`
            sink.wait_for_lines(2 * i)
    finally:
        sink.go_on.release()
        os.close(writer_out)
        os.close(writer_err)
    out.finish()
    out.close()
    assert sink.lines() == [(f"{s} {i}", STDOUT if s == "out" else STDERR)
                            for i in range(1, pairs + 1) for s in ("out", "err")]
    assert out.stderr == b"".join(b"err %d\n" % i for i in range(1, pairs + 1))


def test_output_never_opened_ends_when_the_run_does(output):
    out, sink = output
    out.start()
    assert not out.ended
    out.finish()  # the container ended without writing (or opening) anything
    assert out.ended  # the end of both streams, not a reader left behind
    assert sink.writes == [] and out.stderr == b""


def test_the_fifos_are_writable_by_any_user_and_removed_at_the_end(output):
    out, _ = output
    for name in ("out", "err"):
        assert (out.folder / name).stat().st_mode & 0o777 == 0o666
    out.close()
    assert not out.folder.exists()


def test_a_crashed_runs_folder_is_replaced(tmp_path):
    folder = tmp_path / ".output"
    folder.mkdir()
    (folder / "out").write_text("a regular file a crash left")
    out = OrderedOutput(folder, Collected(), BUSYBOX)
    try:
        assert (folder / "out").is_fifo()
    finally:
        out.close()


def test_only_a_static_executable_is_taken_as_the_shell(tmp_path):
    assert _static_elf(BUSYBOX)  # Debian's busybox-static, installed by make setup
    assert not _static_elf(Path(sys.executable).resolve())  # needs its libc
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    with pytest.raises(ValueError):
        _static_elf(text)


def test_the_shell_is_copied_once_and_again_when_it_changes(tmp_path):
    source = tmp_path / "busybox"
    source.write_bytes(b"one")
    copy = _copied(source, tmp_path / "state" / "busybox")
    assert copy.read_bytes() == b"one" and os.access(copy, os.X_OK)
    inode = copy.stat().st_ino
    assert _copied(source, copy).stat().st_ino == inode  # the same: kept
    source.write_bytes(b"two!")
    assert _copied(source, copy).read_bytes() == b"two!"
