"""The `mistryd` process when builds run in builder processes: it starts, watches, replaces and
stops the API workers and the builders, and does nothing else.

One command starts the whole server on one machine. The supervisor binds the listening socket,
takes build_path's lock and recovers what a previous run left (the caller does those), then forks
`http_workers` API worker processes (mistryd/web/worker.py: waitress on the shared socket, hits
answered there, misses through the queue) and `builder_processes` builder processes
(mistryd/builders.py: they take jobs from the queue). Forked after every module is imported, the
children share the code's memory pages.

The supervisor stays one thread (a loop on a self-pipe fed by signals), so that forking a child
later (a replacement, a reload) copies no lock held by another thread, and it keeps no SQLite
connection open across a fork. A child that dies is replaced (1 s, doubling while it keeps dying
young, up to 30 s); a dead builder's containers are removed and its jobs queued again at once.
SIGHUP replaces the API workers one by one (a new one first, then the old one drains): running
builds never notice. SIGTERM or SIGINT stops the whole server: new builds are refused, running
builds get `shutdown_grace` seconds, then the API workers drain and end.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .builders import builder_prefix, run_builder
from .config import Config
from .metrics import process_gone
from .server import Server
from .web.capacity import SHARED_ROWS, SharedCounts

log = logging.getLogger("mistryd")

RESTART_FIRST = 1.0  # seconds before a child that died is started again ...
RESTART_MOST = 30.0  # ... doubling while it keeps dying young, up to this
YOUNG = 60.0  # a child that lived shorter than this died young
LATE = 60.0  # seconds past its grace after which a child that does not stop is killed
API, BUILDER = "api", "builder"
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CHILD_SIGNALS = (*SIGNALS, signal.SIGUSR1)  # what the supervisor sends its children


@dataclass
class Slot:
    """One place for a child process of one kind, filled again whenever its child dies."""

    kind: str
    index: int
    pid: int | None = None
    row: int = -1  # an API worker's row in the shared request-slot counts
    born: float = 0.0
    delay: float = RESTART_FIRST
    start_at: float = 0.0  # monotonic: when an empty slot is filled again


class Supervisor:
    def __init__(self, config: Config, server: Server, listener: socket.socket):
        self.config = config
        self.server = server  # the supervisor's own: recovery done, no thread, no build
        self.listener = listener
        self.slots = [Slot(API, i) for i in range(config.api_processes)] + \
                     [Slot(BUILDER, i) for i in range(config.builder_processes)]
        self.retiring: dict[int, tuple[float, int]] = {}  # draining API workers: pid -> (kill
        # after, row)
        self.request_slots = server.layout.state_dir() / "request-slots"
        self._free_rows = list(range(SHARED_ROWS))
        # Docker was down at recovery: the first builder removes the previous run's containers
        # before it makes one of its own
        self._orphans_left = server.runner.orphans_left
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._signals: list[int] = []  # noted by the handler, taken by the loop
        self.pid = os.getpid()

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT; then stop every child and return."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)  # wakes the select
        for sig in SIGNALS:
            signal.signal(sig, self._noted)
        self.server.store.close()  # no SQLite connection crosses a fork
        SharedCounts.clear(self.request_slots)
        for slot in self.slots:
            self._spawn(slot)
        while True:
            for signum in self._wait(self._next_timeout()):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self._stop()
                    return
                if signum == signal.SIGHUP:
                    self._reload_api()
            self._reap()
            self._refill()

    def _noted(self, signum, frame) -> None:
        """A signal is noted here, and its byte on the wakeup fd ends the loop's select; the
        loop does the work."""
        self._signals.append(signum)

    def _wait(self, timeout: float) -> list[int]:
        """The signals that arrived (in order), waiting up to `timeout` seconds for one."""
        if not self._signals:
            try:
                select.select([self._wake_r], [], [], timeout)
            except InterruptedError:
                pass
            try:
                os.read(self._wake_r, 512)
            except BlockingIOError:
                pass
        arrived, self._signals = self._signals, []
        return arrived

    def _next_timeout(self) -> float:
        now = time.monotonic()
        due = [s.start_at for s in self.slots if s.pid is None] + \
            [kill_after for kill_after, _ in self.retiring.values()]
        return max(0.05, min([1.0, *(d - now for d in due)]))

    # --- children -----------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        collect = slot.kind == BUILDER and slot.index == 0  # one builder collects garbage
        remove_orphans = collect and self._orphans_left
        self._orphans_left = self._orphans_left and not remove_orphans
        if slot.kind == API:
            slot.row = self._free_rows.pop(0) if self._free_rows else -1
            body = functools.partial(_api_worker, self.config, self.listener, self.request_slots,
                                     slot.row)
        else:
            body = functools.partial(run_builder, self.config, collect, remove_orphans)
        # a signal for the child must not reach the supervisor's handler in it: blocked over the
        # fork, it waits until the child has the default handlers back
        signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._in_child(slot.kind, body)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS)
        slot.pid, slot.born = pid, time.monotonic()
        log.debug("mistryd: %s process %d started", slot.kind, pid)

    def _in_child(self, kind: str, body: Callable[[], int]) -> None:
        """The forked child: the supervisor's signals and pipe go, then the child's work; it
        never returns into the supervisor's code."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, CHILD_SIGNALS)
            os.close(self._wake_r)
            os.close(self._wake_w)
            _die_with_parent(self.pid, f"mistryd-{kind}")
            code = body()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - the supervisor replaces the child and logs it
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.pid is not None and (status := _exited(slot.pid)) is not None:
                self._gone(slot, status)
        for pid, (kill_after, row) in list(self.retiring.items()):
            if _exited(pid) is not None:
                del self.retiring[pid]
                process_gone(pid)
                self._free_row(row)
            elif time.monotonic() > kill_after:
                log.warning("mistryd: API process %d did not drain; killing it", pid)
                _signal(pid, signal.SIGKILL)
                self.retiring[pid] = (time.monotonic() + LATE, row)

    def _gone(self, slot: Slot, status: int) -> None:
        pid, slot.pid = slot.pid, None
        assert pid is not None  # noqa: S101 - only a running slot's child is reaped
        process_gone(pid)
        if slot.kind == API:
            self._free_row(slot.row)
        if slot.kind == BUILDER:
            try:
                self.server.builder_gone(builder_prefix(self.config, pid))
            finally:
                self.server.store.close()
        if self._stopping:
            return
        lived = time.monotonic() - slot.born
        slot.delay = RESTART_FIRST if lived > YOUNG else min(slot.delay * 2, RESTART_MOST)
        slot.start_at = time.monotonic() + (RESTART_FIRST if lived > YOUNG else slot.delay)
        what = "its jobs are queued again and a new builder starts" if slot.kind == BUILDER \
            else "a new one starts"
        log.warning("mistryd: %s process %d ended unexpectedly (%s); %s", slot.kind, pid,
                    _how(status), what)

    def _free_row(self, row: int) -> None:
        """An API worker ended: the slots it held are free (its row is zeroed) for another."""
        if row >= 0:
            SharedCounts.clear(self.request_slots, row)
            self._free_rows.append(row)

    def _refill(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.pid is None and now >= slot.start_at and not self._stopping:
                self._spawn(slot)

    def _reload_api(self) -> None:
        """SIGHUP: a new API worker in each place, then the old one drains (it stops accepting
        at once; its requests get `shutdown_grace` seconds)."""
        log.info("mistryd: reloading the API processes; builds go on")
        for slot in self.slots:
            if slot.kind != API or slot.pid is None:
                continue
            old, row = slot.pid, slot.row
            self._spawn(slot)
            self.retiring[old] = (time.monotonic() + self.config.shutdown_grace + LATE, row)
            _signal(old, signal.SIGTERM)

    # --- stop ---------------------------------------------------------------------------------

    def _stop(self) -> None:
        """New builds are refused at once; running builds get `shutdown_grace` seconds (then
        they are cancelled and recorded); then the API workers answer what they hold and end."""
        self._stopping = True
        grace = self.config.shutdown_grace
        log.warning("mistryd: stopping; running builds get %ss to finish", grace)
        apis = [s.pid for s in self.slots if s.kind == API and s.pid is not None]
        for pid in apis:
            _signal(pid, signal.SIGUSR1)  # refuse new builds; hits and waiters go on
        self._stop_kind(BUILDER, grace)
        for pid in apis:
            _signal(pid, signal.SIGTERM)
        self._stop_kind(API, grace)
        for pid in list(self.retiring):
            _signal(pid, signal.SIGKILL)
            _wait_exited(pid, 5)
            process_gone(pid)
        self.server.store.checkpoint()

    def _stop_kind(self, kind: str, grace: float) -> None:
        slots = [s for s in self.slots if s.kind == kind and s.pid is not None]
        for slot in slots:
            assert slot.pid is not None  # noqa: S101
            if kind == BUILDER:
                _signal(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + LATE
        forced = False
        while any(s.pid is not None for s in slots):
            signals = self._wait(0.2)
            if not forced and (time.monotonic() > deadline or signal.SIGINT in signals):
                forced = True  # late, or a second ^C: no more waiting
                for s in slots:
                    if s.pid is not None:
                        log.warning("mistryd: %s process %d did not stop; killing it", kind, s.pid)
                        _signal(s.pid, signal.SIGKILL)
            self._reap()


def _api_worker(config: Config, listener: socket.socket, request_slots, row: int) -> int:
    from .web.worker import serve

    return serve(config, listener, SharedCounts(request_slots, row) if row >= 0 else None)


def _exited(pid: int) -> int | None:
    """The wait status of a child that has ended (reaped now), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return status if done else None


def _wait_exited(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _exited(pid) is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(sig).name}"
        except ValueError:
            return f"signal {sig}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _die_with_parent(parent: int, name: str) -> None:
    """Be killed when the supervisor dies (Linux), not stopped gracefully: a server that died
    leaves builds to its next start's recovery, which must find no child of the old one running.
    Exit now when the supervisor is already gone. And be `name` in ps and top (`comm`)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, name.encode()[:15])  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
