"""The WSGI server (waitress) with the settings mistryd needs; used by the CLI and the tests alike."""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time

from flask import Flask
from waitress.buffers import OverflowableBuffer, ReadOnlyFileBasedBuffer
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import RequestEntityTooLarge

from ..config import Config
from ..done import Done
from ..errors import ConfigError
from .lane import HitLane
from .loop import ChannelLoop
from .threads import BoundedDispatcher, step_aside

# On every answer, the app's and waitress's own: no MIME sniffing, no framing, no referrer to
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


OUTBUF_WATERMARK = 4 << 20
HELD_ANSWER = 256 << 10  # a whole answer up to this size is sent by the I/O thread (MistrydTask)


class QuietDisconnects(logging.Filter):
    """A client that hangs up (a closed build page, a cancelled download, a client's own timeout)
    is ordinary for a build server: waitress's line for each would bury the server's own log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client disconnected while serving")


QUIET_DISCONNECTS = QuietDisconnects()


class JsonErrorTask(ErrorTask):
    """waitress's own refusals (a body over the limit, a malformed request) as JSON
    {"error": ...} like every other error of mistryd, instead of waitress's plain text."""

    def execute(self) -> None:
        error = self.request.error  # type: ignore[attr-defined]  # the stub: request is the parser
        message = f"{error.reason}: {error.body}"
        if isinstance(error, RequestEntityTooLarge):
            limit = self.channel.server.adj.max_request_body_size - 1
            message = (f"the request body is larger than {limit} bytes; send a smaller one "
                       "(or raise max_body_bytes in the server's config)")
        body = json.dumps({"error": message}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers = [*self.response_headers, ("Content-Type", "application/json"),
                                 *SECURITY_HEADERS.items()]
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


# in a request's environ: listen(callback) -> stop listening; callback is called once the
# client's connection is closed (at once if it is), on waitress's I/O thread: it must be quick
WHEN_CLIENT_GONE = "mistryd.when_client_gone"


class MistrydTask(WSGITask):
    """waitress's request task; its environ tells how to hear of the client hanging up."""

    def get_environment(self) -> dict:
        environ = super().get_environment()
        channel = self.channel
        assert isinstance(channel, MistrydChannel)  # the task of mistryd's own channel
        environ[WHEN_CLIENT_GONE] = channel.closed.listen
        return environ

    def write(self, data) -> None:
        """A short answer written whole (a cache hit, any JSON) is left for waitress's I/O
        thread to send, head and body in one send, once the request has ended. Sent by this
        thread instead (waitress's way), it wakes the client at once, whose next request then
        finds the I/O thread waiting for this thread to let go of the interpreter: a cached
        `POST /jobs` answered 3,700-4,100 times a second that way, 5,500-6,000 this way."""
        channel = self.channel
        assert isinstance(channel, MistrydChannel)
        channel.holding = (not self.wrote_header and self.content_length is not None
                           and len(data) == self.content_length <= HELD_ANSWER)
        try:
            super().write(data)
        finally:
            channel.holding = False


class MistrydChannel(HTTPChannel):
    """waitress's channel, and:
    - a file answered whole (`wsgi.file_wrapper`: an artifact) goes out with `sendfile` from the
      page cache, where waitress would read it into Python in pieces of the socket buffer's size
      on its one I/O thread;
    - a request that waits (for a build, a log line) hears of its client hanging up when it
      happens (WHEN_CLIENT_GONE), instead of asking every so often;
    - a short answer written whole is held for the I/O thread (`holding`, MistrydTask.write);
    - a cache hit is answered where waitress would hand it to a request thread, by the hit lane
      (`answered_here`, web/lane.py);
    - the I/O loop (web/loop.py) is told when a request thread changed what the connection
      waits for (`_touch`)."""

    task_class = MistrydTask
    error_task_class = JsonErrorTask
    holding = False  # MistrydTask.write: append without sending

    def __init__(self, *args, **kwargs) -> None:
        self.closed = Done()  # set on waitress's I/O thread: listeners must be quick
        super().__init__(*args, **kwargs)
        self._loop: ChannelLoop = self.server.channel_loop  # type: ignore[attr-defined]  # ours
        self._touch()

    def _touch(self) -> None:
        self._loop.touch(self._fileno)  # type: ignore[attr-defined]  # wasyncore's, not in the stubs

    def service(self) -> None:
        super().service()
        self._touch()  # a request ended: what the connection waits for changed

    def write_soon(self, data) -> int:
        if not self.holding:
            written = super().write_soon(data)
            self._touch()  # more to send, or sent: the I/O loop looks again
            return written
        if not self.connected:
            raise ClientDisconnected
        self._append(data)
        return len(data)

    def _append(self, data: bytes) -> None:
        """As waitress appends an answer, without its send: the I/O thread sends it."""
        with self.outbuf_lock:  # a new buffer per answer, as waitress's service() asks
            if self.current_outbuf_count >= self.adj.outbuf_high_watermark:
                self.outbufs.append(OverflowableBuffer(self.adj.outbuf_overflow))  # type: ignore[attr-defined]  # a list
                self.current_outbuf_count = 0
            self.outbufs[-1].append(data)
            self.current_outbuf_count += len(data)
            self.total_outbufs_len += len(data)
        self._touch()

    def answered_here(self) -> bool:
        """Where waitress hands this connection's first request to a request thread (on the I/O
        thread, or on the thread that just answered the one before; `requests_lock` held): the
        requests the hit lane answers (web/lane.py) are answered right here, in order. True when
        none is left for a request thread."""
        lane: HitLane | None = self.server.hit_lane  # type: ignore[attr-defined]  # ours
        while self.requests and self.connected and lane is not None:
            answer = lane.answer(self.requests[0])
            if answer is None:
                return False
            self._append(answer)
            self.requests.pop(0).close()  # type: ignore[attr-defined]  # a list
            self.last_activity = time.time()
        return not self.requests

    def handle_read(self) -> None:
        super().handle_read()
        if self.total_outbufs_len and not self.requests and self.connected:
            self.handle_write()  # answered by the hit lane: sent now, not a turn of the loop later

    def del_channel(self, map=None) -> None:  # noqa: A002 - waitress's name
        """Every way a connection closes ends here (wasyncore's close)."""
        self._loop.forget(self._fileno)  # type: ignore[attr-defined]
        super().del_channel(map)
        self.closed.set()

    def _flush_outbufs_below_high_watermark(self) -> None:
        """A request thread whose answer has more unsent than the watermark waits for the client
        here: it steps aside for a queued request meanwhile (web/threads.py)."""
        if self.total_outbufs_len > self.adj.outbuf_high_watermark:
            step_aside()
        super()._flush_outbufs_below_high_watermark()  # type: ignore[misc]  # not in the stubs

    def _flush_some(self, do_close: bool = True) -> bool:
        buf = self.outbufs[0]
        if type(buf) is not ReadOnlyFileBasedBuffer or not buf.remain:
            return super()._flush_some(do_close)  # type: ignore[misc]  # not in waitress's stubs
        sent = _sendfile_some(self, buf, do_close)
        if sent:
            self.last_activity = time.time()
        if buf.remain and self.connected:
            return bool(sent)  # the socket is full: the loop calls again when it is writable
        return super()._flush_some(do_close) or bool(sent)  # done: waitress moves on


def _sendfile_some(channel: HTTPChannel, buf: ReadOnlyFileBasedBuffer, do_close: bool) -> int:
    """As much of the file as the socket takes now; the file's position follows what was sent."""
    file, sock = buf.file, channel.socket
    assert sock is not None  # a connected channel's
    sent = 0
    while buf.remain:
        offset = file.tell()
        try:
            n = os.sendfile(sock.fileno(), file.fileno(), offset, buf.remain)
        except BlockingIOError:
            break
        except OSError:  # the client went away (or the file did): as waitress's own send
            if do_close:
                channel.handle_close()
            break
        if n == 0:  # the file is shorter than announced: the answer is cut, the connection closed
            channel.total_outbufs_len -= buf.remain
            buf.remain = 0
            channel.will_close = True
            break
        file.seek(offset + n)
        buf.remain -= n
        channel.total_outbufs_len -= n
        sent += n
    return sent


def make_http_server(app: Flask, config: Config, port: int | None = None,
                     sock: socket.socket | None = None) -> BaseWSGIServer:
    """A sync build request holds a thread while it waits, so there are many threads; idle
    keep-alive connections must not use up the connection limit (waitress's default is 100).
    waitress reads a whole body (spooling it to a temporary file) before the app sees it: the
    body limit is waitress's too, so a larger Content-Length is answered 413 before any of it is
    read (waitress refuses a length equal to its limit, hence the + 1)."""
    where = {"sockets": [sock]} if sock is not None else {
        "host": _one_address(config.host), "port": config.port if port is None else port}
    http = create_server(
        app, **where, _dispatcher=BoundedDispatcher(),
        threads=config.http_threads, connection_limit=max(1000, 4 * config.http_threads),
        channel_timeout=3600, cleanup_interval=10, ident="mistryd", clear_untrusted_proxy_headers=True,
        max_request_body_size=config.max_body_bytes + 1,
        # read ahead on a connection while its request runs: that is how waitress notices a
        # client that went away (`waitress.client_disconnected`), and a waiter lets go
        channel_request_lookahead=1,
        # an answer's unsent bytes stay in memory (waitress would spool more than 1 MB of them
        # to a temporary file, writing and reading every byte of an artifact stream once more);
        # a writer waits while more than the watermark is unsent, and writes 1 MiB at a time
        outbuf_high_watermark=OUTBUF_WATERMARK, outbuf_overflow=2 * OUTBUF_WATERMARK,
        log_socket_errors=False,  # a reset by a client that hung up: no traceback in the log
    )
    logging.getLogger("waitress").addFilter(QUIET_DISCONNECTS)  # the same filter once
    if not isinstance(http, BaseWSGIServer):  # several sockets: _one_address prevents it
        http.close()
        raise RuntimeError(f"waitress listens on {http.effective_listen}, not on one address")
    http.channel_class = MistrydChannel
    server = app.extensions.get("mistryd")  # a Server: mistryd's app (tests serve others too)
    http.hit_lane = HitLane(server, SECURITY_HEADERS, http.adj.ident) if server else None  # type: ignore[attr-defined]  # ours
    http.add_task = functools.partial(_add_task, http)  # type: ignore[method-assign]
    http.channel_loop = ChannelLoop(lambda obj: isinstance(obj, MistrydChannel))  # type: ignore[attr-defined]
    http.asyncore = http.channel_loop  # type: ignore[attr-defined]  # waitress's loop, on epoll
    http.task_dispatcher.set_thread_count(config.http_threads)  # waitress does for its own only
    return http


def _add_task(http: BaseWSGIServer, channel: HTTPChannel) -> None:
    """waitress's server hands a connection with a request to answer to its request threads
    here; the hit lane answers what it can first."""
    if not (isinstance(channel, MistrydChannel) and channel.answered_here()):
        http.task_dispatcher.add_task(channel)  # type: ignore[arg-type]  # a channel is a task


def listen(config: Config) -> socket.socket:
    """The listening socket every API worker process accepts from (made before they start)."""
    host = _one_address(config.host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, config.port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def _one_address(host: str) -> str:
    """The address to listen on: one of `host`'s, IPv4 first, as upstream mistry (Go's net.Listen)
    does. waitress itself would listen on every address of a name (`localhost` is 127.0.0.1 and
    ::1 on most systems) with a server of another kind, which mistryd does not set up."""
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError("addr", f"{host} does not resolve ({e.strerror}); give an IP address "
                                  "or a host name this machine resolves") from None
    first = min(found, key=lambda info: info[0] != socket.AF_INET)  # min is stable: the first IPv4
    return str(first[4][0])


def stop_accepting(http: BaseWSGIServer) -> None:
    """Accept no new connection (the other processes listening on the socket take them); the
    connections open stay open and their requests run on."""

    def stop() -> None:
        http.accepting = False  # waitress polls the listening socket only while accepting

    http.trigger.pull_trigger(stop)  # type: ignore[attr-defined]  # in waitress's own loop


def drain_http_server(http: BaseWSGIServer, grace: float) -> None:
    """Stop accepting; let every request in progress end, for up to `grace` seconds; then close.
    A connection counts as idle once it has no request, no answer left to send and no traffic
    for QUIET seconds (a connection accepted just now brings its request within that)."""
    stop_accepting(http)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _idle(http):
        time.sleep(DRAIN_LOOK)
    stop_http_server(http)


QUIET = 1.0
DRAIN_LOOK = 0.1


def _idle(http: BaseWSGIServer) -> bool:
    dispatcher = http.task_dispatcher
    if dispatcher.active_count or dispatcher.queue:
        return False
    now = time.time()
    for channel in list(http._map.values()):  # type: ignore[attr-defined]  # waitress's socket map
        if isinstance(channel, HTTPChannel) and (
                channel.requests or channel.request is not None or channel.total_outbufs_len
                or now - channel.last_activity < QUIET):
            return False
    return True


def stop_http_server(http: BaseWSGIServer) -> None:
    """Close every socket from inside waitress's own loop thread, so the loop ends by itself
    instead of failing on a descriptor closed under it."""

    def close_all() -> None:
        for channel in list(http._map.values()):  # type: ignore[attr-defined]  # waitress's socket map
            channel.close()

    try:
        http.trigger.pull_trigger(close_all)  # type: ignore[attr-defined]  # the stub: trigger is an int
    except OSError:
        pass  # the loop has ended already (its last socket closed), and closed its trigger
    # the request threads end too (a server started and stopped in one process, as the tests
    # do, would otherwise leave http_threads idle threads behind each time)
    http.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
