"""The HTTP server: granian (hyper and tokio, in Rust) on a listening socket, calling the WSGI
app on a pool of Python threads; used by the API processes, the one-process mode and the tests.

Why granian: a cache hit is a few dozen microseconds of Python, and the HTTP around it was most
of a hit's cost with a pure-Python server (waitress: its socket loop, its parser and the hand-off
between its I/O thread and the request threads). granian parses, reads and writes in Rust and
holds the GIL only while the app runs: 2.6x the hits per second of waitress here (docs/
performance.md). mistryd runs granian's worker on its own listening socket (made before the API
processes start, shared by all of them) rather than granian's process manager, because mistryd's
supervisor owns the processes (drain, refuse-new, restart); that uses granian's worker class
directly, so the version is pinned (pyproject.toml) and tests/unit/test_http_server.py checks it.

What the app can rely on:
- a body over `max_body_bytes` is refused 413 before it is read (Flask's MAX_CONTENT_LENGTH,
  answered as JSON by the app's error handler);
- `wsgi.file_wrapper` sends a file in reads of FILE_READ bytes, and no further than the answer's
  Content-Length (an artifact, a range of the kept tar or of the manifest's file);
- a streamed answer ends (its iterable is closed) once a write to a client that has gone away
  fails: a long answer that writes something every few seconds lets go of its thread soon after
  its client hangs up (log streams' keep-alives, the heartbeat of a sync wait);
- `drain` stops accepting (the other processes on the socket take new connections) and waits for
  the requests in progress, up to a grace period.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask

from ..config import Config
from ..errors import ConfigError
from ..logs import KEEP_ALIVE

# On every answer of the app: no MIME sniffing, no framing, no referrer to
# other sites. Views may set their own (setdefault).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # the pages load only /static/ CSS and JS (no inline script or style); the favicon is data:
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
}



FILE_READ = 1 << 20  # bytes per read of a file answer
SMALL_ANSWER = 256 << 10  # answers up to this size are handed over whole, bigger ones streamed
BACKLOG = 1024
BACKPRESSURE = 1024  # requests a process takes at once; beyond them the kernel's backlog holds
# connections (idle keep-alive ones are not requests)

log = logging.getLogger("mistryd")


class FileAnswer:
    """`wsgi.file_wrapper`: a file sent from its current position in reads of FILE_READ bytes,
    up to `limit` bytes (the answer's Content-Length, set by the server) or its end; closing it
    closes the file (an artifact's file gives back its build's lease then)."""

    __slots__ = ("file", "limit")

    def __init__(self, file: Any, block_size: int = FILE_READ):
        self.file = file
        self.limit: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        want = FILE_READ if self.limit is None else min(FILE_READ, self.limit)
        data = self.file.read(want) if want else b""
        if not data:
            raise StopIteration
        if self.limit is not None:
            self.limit -= len(data)
        return data

    # werkzeug's range answers (`make_conditional`) seek the file through its wrapper
    def seekable(self) -> bool:
        return bool(getattr(self.file, "seekable", lambda: False)())

    def seek(self, *args: int) -> None:
        self.file.seek(*args)

    def tell(self) -> int:
        return int(self.file.tell())

    def close(self) -> None:
        self.file.close()


class _CappedBody:
    """A body without Content-Length (chunked), read no further than `limit` bytes: past it a
    read raises 413, which the app answers (werkzeug's own limit would stop silently)."""

    def __init__(self, inner: Any, limit: int):
        self.inner = inner
        self.left = limit

    def _count(self, data: bytes) -> bytes:
        self.left -= len(data)
        # at the limit, one byte more tells a body of exactly `limit` bytes from a longer one
        # (werkzeug reads no further than its limit, and would take the first `limit` bytes)
        if self.left < 0 or (self.left == 0 and data and self.inner.read(1)):
            from werkzeug.exceptions import RequestEntityTooLarge

            raise RequestEntityTooLarge()
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.left + 1
        return self._count(self.inner.read(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(self.inner.readline(self.left + 1 if size is None or size < 0
                                               else size))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")


class _Streamed:
    """A streamed answer as granian takes it (`__next__` as an attribute, `close`); it ends at
    its next write once the server is closing; closing it closes the app's iterable and ends
    the request's count."""

    __slots__ = ("inner", "__next__", "done", "_next", "_closing")

    def __init__(self, inner: Iterable[bytes], done: Callable[[], None], closing: threading.Event):
        self.inner = inner
        self.done = done
        self._next = iter(inner).__next__
        self._closing = closing
        self.__next__ = self._guarded

    def _guarded(self) -> bytes:
        if self._closing.is_set():
            raise StopIteration
        return self._next()

    def close(self) -> None:
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.done()


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if len(name) == 14 and name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HttpServer:
    """granian's worker on `sock`, calling `app` on up to `threads` Python threads."""

    def __init__(self, app: Flask, sock: socket.socket, threads: int, max_body: int):
        self.app = app
        self.max_body = max_body
        self.sock = sock
        self.threads = threads
        self._stop = _worker_signal()
        self._ended = threading.Event()
        self._closing = threading.Event()  # streams end at their next write
        self._count_lock = threading.Lock()
        self._in_flight = 0
        self._started = False
        self._base_environ = {
            "GATEWAY_INTERFACE": "CGI/1.1", "SCRIPT_NAME": "", "SERVER_SOFTWARE": "mistryd",
            "wsgi.errors": _LogStream(), "wsgi.input_terminated": True,
            "wsgi.multiprocess": True, "wsgi.multithread": True, "wsgi.run_once": False,
            "wsgi.version": (1, 0), "wsgi.file_wrapper": FileAnswer,
        }

    @property
    def effective_port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def run(self) -> None:
        """Serve until `stop` (or the end of `drain`)."""
        from granian.http import HTTP1Settings

        # granian's stub file lags behind its binary (the worker's arguments): untyped here
        native: Any = importlib.import_module("granian._granian")
        SocketHolder, WSGIWorker = native.SocketHolder, native.WSGIWorker  # noqa: N806

        # granian closes the descriptor it is given: its own copy
        holder = SocketHolder(os.dup(self.sock.fileno()), False, BACKLOG)
        worker = WSGIWorker(
            1, (None, holder), None,  # worker id, the socket, no IPC (no granian metrics)
            1, 512,  # one Rust runtime thread (the I/O), its blocking pool for file reads
            self.threads, 30,  # Python threads running the app, their idle timeout (s)
            BACKPRESSURE, "1", HTTP1Settings(keep_alive=True), None,  # HTTP/1.1 only
            None,  # no static files served by granian itself
            False, None, None, None, "tls1.3", None, [], False,  # no TLS (a proxy's job)
            (None, None),  # no metrics (mistryd's own /metrics)
        )
        self._started = True
        loop = asyncio.new_event_loop()  # never run: a WSGI app is called on granian's threads
        try:
            worker.serve_str(_scheduler(loop, self._call), loop, self._stop)
            self._ended.wait()
        finally:
            loop.close()

    def stop_accepting(self) -> None:
        """Accept no new connection (the other processes on the socket take them); the requests
        in progress run on, and idle keep-alive connections are closed."""
        self._stop.set()

    def drain(self, grace: float) -> None:
        """Stop accepting; let every request in progress end, for up to `grace` seconds; then
        let `run` return."""
        self.stop_accepting()
        self._wait_in_flight(grace)
        # streams still open (log followers, sync waits) end at their next write: a keep-alive
        # or a heartbeat comes within KEEP_ALIVE seconds. The app's threads must not outlive
        # the server: a thread of granian's in Python when the interpreter ends aborts it.
        self._closing.set()
        self._wait_in_flight(KEEP_ALIVE + 1)
        self.sock.close()  # this process's copy: new connections are refused, or other processes'
        self._ended.set()

    def _wait_in_flight(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(DRAIN_LOOK)

    def stop(self, wait: float = 5.0) -> None:
        """Stop serving: new connections are refused; requests in progress get up to `wait`
        seconds (their Python threads must not outlive the interpreter)."""
        self.drain(wait if self._started else 0)

    def _enter(self) -> None:
        with self._count_lock:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def _call(self, proto: Any, scope: dict) -> int:
        environ = self._base_environ | scope
        if "CONTENT_LENGTH" not in environ:  # chunked, or no body
            environ["wsgi.input"] = _CappedBody(environ["wsgi.input"], self.max_body)
        answer: list = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answer[:] = (int(status[:3]), headers)
            return _no_write

        self._enter()
        try:
            result = self.app(environ, start_response)
            status, headers = answer
            length = _content_length(headers)
            if type(result) is FileAnswer:
                result.limit = length
            elif type(result) is list or (length is not None and length <= SMALL_ANSWER):
                try:
                    body = b"".join(result)
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
                proto.response_bytes(status, headers, body)
                self._leave()
                return status
        except BaseException:
            self._leave()
            raise
        proto.response_iter(status, headers, _Streamed(result, self._leave, self._closing))
        return status


def _no_write(data: bytes) -> None:
    raise NotImplementedError("WSGI's write() is not supported: return the body")


def _scheduler(loop: asyncio.AbstractEventLoop, call: Callable[[Any, dict], int]) -> Any:
    """granian's callback scheduler, as granian makes it for a WSGI worker, except that its
    stand-in task is not left among asyncio's tasks: it is no task of any loop, and asyncio's
    `all_tasks` (asked by any asyncio user in the same process, such as Playwright in the
    tests) fails on it."""
    from granian._futures import _CBScheduler, _CBSchedulerTask

    task = _CBSchedulerTask()  # registers itself
    asyncio.tasks._unregister_task(task)
    return _CBScheduler(loop, call, task, functools.partial(asyncio.tasks._enter_task, loop),
                        functools.partial(asyncio.tasks._leave_task, loop))


def _worker_signal() -> Any:
    return importlib.import_module("granian._granian").WorkerSignal()


class _LogStream:
    """`wsgi.errors`: what the app writes there goes to mistryd's log."""

    def write(self, text: str) -> None:
        if text.strip():
            log.error("%s", text.rstrip())

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


DRAIN_LOOK = 0.05


def make_http_server(app: Flask, config: Config, port: int | None = None,
                     sock: socket.socket | None = None) -> HttpServer:
    """The server for `app` on `sock`, or on a socket of its own on the config's address (and
    `port`, when given)."""
    if sock is None:
        sock = listen(config, port)
    return HttpServer(app, sock, config.http_threads, config.max_body_bytes)


def listen(config: Config, port: int | None = None) -> socket.socket:
    """The listening socket every API worker process accepts from (made before they start)."""
    host = _one_address(config.host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, config.port if port is None else port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _one_address(host: str) -> str:
    """The address to listen on: one of `host`'s, IPv4 first, as upstream mistry (Go's net.Listen)
    does; a name (`localhost` is 127.0.0.1 and ::1 on most systems) is not every address it has."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError("addr", f"{host} does not resolve ({e.strerror}); give an IP address "
                                  "or a host name this machine resolves") from None
    first = min(found, key=lambda info: info[0] != socket.AF_INET)  # min is stable: the first IPv4
    return str(first[4][0])


def drain_http_server(http: HttpServer, grace: float) -> None:
    http.drain(grace)


def stop_http_server(http: HttpServer) -> None:
    http.stop()
