"""A tree of many files placed by several processes at once, each making its own run of the
manifest's entries (its files from `.tar?start=N&stop=M`) in the same staging folder.

Making thousands of files is work for the kernel and for the interpreter in about equal parts,
and one Python process does it on one core (threads would queue on the GIL: measured slower
than one thread). So on Linux, where `fork` is cheap and safe for a process without threads,
the needed entries are split into contiguous runs of about equal cost and each run is placed by a
forked child with a connection of its own. A child reports progress and its failure (one line)
over a pipe and never touches anything but its own entries (and the folders they lie in); the
parent waits for all, and on the first failure stops the others and raises it. Elsewhere, and for
small sets, one process does it all.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from collections.abc import Callable

from .errors import ClientError, TransferError

PER_ENTRY_COST = 32 << 10  # making a file (or folder, or link) costs about as much as this
# many bytes more of a file
PARALLEL_FROM = 512  # files; fewer are fetched by one process
MAX_WORKERS = 4


def workers_for(files: int) -> int:
    if files < PARALLEL_FROM or not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return 1
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1, files // (PARALLEL_FROM // 2)))


def split(entries: list[int], sizes: list[int], parts: int) -> list[list[int]]:
    """`entries` (ascending) in at most `parts` contiguous runs of about equal cost."""
    costs = [size + PER_ENTRY_COST for size in sizes]
    total = sum(costs)
    runs: list[list[int]] = [[]]
    done = 0
    for i, cost in zip(entries, costs, strict=True):
        if runs[-1] and done >= total * len(runs) / parts and len(runs) < parts:
            runs.append([])
        runs[-1].append(i)
        done += cost
    return runs


FetchRun = Callable[[list[int], Callable[[int], None]], object]


def run_parallel(runs: list[list[int]], fetch_run: FetchRun,
                 progress: Callable[[int], None]) -> list:
    """`fetch_run(run, report)` in one forked child per run; `report(n)` in a child reaches
    `progress(n)` here. What each returns (as JSON), in no particular order; TransferError
    with the first child's failure."""
    children: dict[int, int] = {}  # pid -> the read end of its pipe
    try:
        for run in runs:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                os.close(read_end)
                _child(run, fetch_run, write_end)
            os.close(write_end)
            children[pid] = read_end
        results: list = []
        failure = _collect(children, progress, results)
    except BaseException:
        _stop(children)
        raise
    if failure:
        raise TransferError(failure)
    return results


def _child(run: list[int], fetch_run: FetchRun, pipe: int) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent tells the user; children stop
        reporter = _Reporter(pipe)
        result = fetch_run(run, reporter.add)
        reporter.flush()
        _send(pipe, f"R{json.dumps(result)}\n")
    except ClientError as e:
        code = 1
        _send(pipe, f"E{e.message}\n")
    except BaseException as e:  # noqa: BLE001 - a child must end here, whatever happened
        code = 2
        _send(pipe, f"E{type(e).__name__}: {e}\n")
    finally:
        os._exit(code)  # no cleanup of the parent's: the staging folder is the parent's to remove


class _Reporter:
    """Progress from a child in lines of `P<bytes>`, about one per MiB."""

    def __init__(self, pipe: int):
        self.pipe = pipe
        self.pending = 0

    def add(self, n: int) -> None:
        self.pending += n
        if abs(self.pending) >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            _send(self.pipe, f"P{self.pending}\n")
            self.pending = 0


def _send(pipe: int, line: str) -> None:
    data = line.encode("utf-8", "replace")
    while data:
        data = data[os.write(pipe, data):]


def _collect(children: dict[int, int], progress: Callable[[int], None],
             results: list) -> str | None:
    """Reads every child's pipe to its end, then reaps them; the first failure, if any. A
    failure stops the other children at once."""
    buffers = {fd: b"" for fd in children.values()}
    failure: str | None = None
    while buffers:
        ready, _, _ = select.select(list(buffers), [], [])
        for fd in ready:
            data = os.read(fd, 1 << 16)
            if not data:
                os.close(fd)
                del buffers[fd]
                continue
            *lines, buffers[fd] = (buffers[fd] + data).split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace")
                if text.startswith("P"):
                    progress(int(text[1:]))
                elif text.startswith("R"):
                    results.append(json.loads(text[1:]))
                elif text.startswith("E") and failure is None:
                    failure = text[1:]
                    _signal_all(children, signal.SIGTERM)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        if failure is None and status != 0:
            code = os.waitstatus_to_exitcode(status)
            failure = (f"a download process ended by signal {-code}" if code < 0
                       else f"a download process failed (exit code {code})")
    children.clear()
    return failure


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in children:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _stop(children: dict[int, int]) -> None:
    """The parent is failing (Ctrl-C, SIGTERM): the children go too, before the staging folder
    is removed under them."""
    _signal_all(children, signal.SIGKILL)
    for pid, fd in children.items():
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        try:
            os.close(fd)
        except OSError:
            pass
