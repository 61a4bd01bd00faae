"""Builder processes: where builds run when they do not run in the serving process.

The serving process (`mistryd`: HTTP API, web view, hits, admission) starts `builder_processes`
children, each `python -m mistryd.builders`: a Server whose scheduler has `job_concurrency`
workers and no HTTP. They take jobs from the queue under leases, heartbeat and finish them
(docs/queue.md); waiters, log followers and cancels in the serving process reach them through the
queue. A builder that dies (killed, crashed, out of memory) is replaced: its containers are removed
and its jobs are queued again at once, so they run again on a builder that lives. A child is
killed with its parent (PR_SET_PDEATHSIG), so no builder outlives the server that supervises it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from .metrics import process_gone

log = logging.getLogger("mistryd")

RESTART_FIRST = 1.0  # seconds before a builder that died is started again ...
RESTART_MOST = 30.0  # ... doubling while it keeps dying young, up to this
YOUNG = 60.0  # a builder that lived shorter than this died young


def builder_prefix(pid: int) -> str:
    """The name every lease of the builder process `pid` starts with (its workers add `-<n>`)."""
    return f"builder-{pid}-"


class BuilderProcesses:
    """Start, watch, replace and stop the builder processes of one serving process."""

    def __init__(self, count: int, child_args: Sequence[str], gone: Callable[[str], None],
                 orphans_left: bool = False):
        self.count = count
        # Docker was down when the server recovered: the first builder removes the previous
        # process's containers before it makes one (the others cannot have made one yet
        # before Docker answers; see docs/operations.md)
        self._orphans_left = orphans_left
        self.child_args = list(child_args)  # how the child loads the same config
        self.gone = gone  # called with a dead builder's lease prefix
        self._children: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for slot in range(self.count):
            t = threading.Thread(target=self._keep, args=(slot,), daemon=True,
                                 name=f"mistryd-builder-{slot}")
            t.start()
            self._threads.append(t)

    def pids(self) -> list[int]:
        with self._lock:
            return list(self._children)

    def _spawn(self, slot: int) -> subprocess.Popen:
        extra = []
        if slot == 0 and self._orphans_left:
            extra, self._orphans_left = ["--remove-orphans"], False
        return subprocess.Popen([sys.executable, "-m", "mistryd.builders", *self.child_args,
                                 *extra, "--parent", str(os.getpid())], stdin=subprocess.DEVNULL)

    def _keep(self, slot: int) -> None:
        """Keep one builder process alive in this slot until stop()."""
        delay = RESTART_FIRST
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                child = self._spawn(slot)
                self._children[child.pid] = child
            born = time.monotonic()
            code = child.wait()
            with self._lock:
                self._children.pop(child.pid, None)
            process_gone(child.pid)
            self.gone(builder_prefix(child.pid))
            if self._stopping.is_set():
                return
            log.warning("mistryd: builder process %d ended unexpectedly (%s); its jobs are "
                        "queued again and a new builder starts", child.pid, _how(code))
            delay = RESTART_FIRST if time.monotonic() - born > YOUNG else min(delay * 2,
                                                                               RESTART_MOST)
            self._stopping.wait(delay)

    def stop(self, grace: float) -> None:
        """Each builder gets SIGTERM: it takes no new job, its running builds get `grace`
        seconds, then are cancelled and recorded. A builder still alive long after is killed."""
        self._stopping.set()
        with self._lock:
            children = list(self._children.values())
        for child in children:
            _signal(child, signal.SIGTERM)
        deadline = time.monotonic() + grace + 60
        for child in children:
            try:
                child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("mistryd: builder process %d did not stop; killing it", child.pid)
                _signal(child, signal.SIGKILL)
                child.wait()
        for t in self._threads:
            t.join(5)


def _signal(child: subprocess.Popen, signum: int) -> None:
    try:
        child.send_signal(signum)
    except ProcessLookupError:
        pass


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# --- the child --------------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """Be killed when the parent dies (Linux), not stopped gracefully: a server that died leaves
    builds to its next start's recovery, which must find no builder of the old one running.
    Exit now when the parent is already gone."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(0)


def child_main(argv: Sequence[str]) -> None:
    import argparse

    from .config import load
    from .server import Server

    parser = argparse.ArgumentParser(prog="mistryd.builders")
    parser.add_argument("--config", required=True)
    parser.add_argument("--filesystem")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--remove-orphans", action="store_true")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s [builder %(process)d] %(levelname)s %(message)s")
    config = load(args.config, filesystem=args.filesystem)
    server = Server(config, builder_name=builder_prefix(os.getpid()).rstrip("-"))
    if args.remove_orphans:
        server.runner.remove_orphans_first()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C on the terminal is the parent's to handle
    server.start_building()
    while not stopping.wait(1):
        pass
    server.stop()


if __name__ == "__main__":
    child_main(sys.argv[1:])
