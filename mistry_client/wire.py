"""HTTP/1.1 for the client on the standard library's `http.client`: one keep-alive connection per
Client, separate connect and read timeouts, streamed bodies, and every failure as one `WireError`.

`requests` did this before; importing it (with urllib3, idna, charset detection and certifi) cost
about 60 ms of a cached `mistry build` that takes about 100 ms in all. What the client needs from
HTTP is small: GET and POST to one server, JSON, a streamed body, a Range header, a deadline.
Proxies come from the usual environment variables (http_proxy, https_proxy, no_proxy); https
checks the server's certificate against the system's CA store (SSL_CERT_FILE or SSL_CERT_DIR
point elsewhere)."""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

USER_AGENT = "mistry (python)"
_IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}


class WireError(Exception):
    """The request did not get a whole answer. `phase` says when: "connect" (no connection) or
    "read" (no answer, or a broken one); `timeout` whether it ran out of time."""

    def __init__(self, cause: BaseException, phase: str):
        super().__init__(cause)
        self.__cause__ = cause
        self.phase = phase
        self.timeout = isinstance(cause, TimeoutError)


class Response:
    """An answer whose body is read on demand; `close()` (or the `with` block) ends it, and a
    connection whose body was not read to the end is closed rather than used again."""

    def __init__(self, raw: http.client.HTTPResponse, method: str, path: str,
                 sock: socket.socket, drop: Callable[[], None]):
        self.raw = raw
        self.method = method
        self.path = path
        self.status_code = raw.status
        self.reason = raw.reason
        self.headers = raw.headers  # case-insensitive .get()
        self._sock = sock
        self._drop = drop  # closes the connection: it cannot carry another request
        self._content: bytes | None = None

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def content(self) -> bytes:
        if self._content is None:
            try:
                self._content = self.raw.read()
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise WireError(e, "read") from None
            self.close()
        return self._content

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return jsonlib.loads(self.content)

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body in pieces: of `chunk_size` bytes (the last may be shorter), or, with None,
        whatever has arrived (a live stream). WireError when the connection breaks."""
        read = self.raw.read1 if chunk_size is None else self.raw.read
        size = -1 if chunk_size is None else chunk_size
        return self._pieces(lambda: read(size))

    def reused_pieces(self, size: int) -> Iterator[memoryview]:
        """The body in pieces of up to `size` bytes, all read into one buffer: a piece is valid
        only until the next is asked for. For bodies of hundreds of MiB, where a new piece for
        every read (iter_content) costs an allocation and its page faults each time, about as
        much as the read itself. WireError when the connection breaks."""
        view = memoryview(bytearray(size))
        return self._pieces(lambda: view[:self.raw.readinto(view)])

    def _pieces(self, read: Callable[[], bytes | memoryview]) -> Iterator[Any]:
        while True:
            try:
                piece = read()
            except (OSError, http.client.HTTPException, ValueError) as e:
                # ValueError: a socket shut by `shutdown` (the deadline) under a buffered read
                self._drop()
                raise WireError(e, "read") from None
            if not piece:
                if self.raw.length:  # http.client ends a cut body quietly: it is not whole
                    self._drop()
                    raise WireError(http.client.IncompleteRead(b"", self.raw.length), "read")
                return
            yield piece

    def shutdown(self) -> None:
        """Ends a read blocked on this answer from another thread (the deadline's timer)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if not self.raw.isclosed():
            if self.raw.length or self.raw.chunked:  # unread body left: the connection is spent
                self._drop()
            self.raw.close()


class _Connection:
    """One keep-alive connection, made again when it was dropped or the server closed it."""

    def __init__(self, scheme: str, host: str, port: int, connect_timeout: float):
        self.scheme, self.host, self.port = scheme, host, port
        self.connect_timeout = connect_timeout
        self.conn: http.client.HTTPConnection | None = None
        self.proxied = False

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def open(self, connect_timeout: float, read_timeout: float) -> bool:
        """Connected, with the read timeout set; True when it is a connection used before."""
        reused = self.conn is not None and self.conn.sock is not None
        if not reused:
            self.drop()
            self.conn = self._new(connect_timeout)
            try:
                self.conn.connect()
            except (OSError, http.client.HTTPException) as e:
                self.drop()
                raise WireError(e, "connect") from None
        assert self.conn is not None and self.conn.sock is not None
        self.conn.sock.settimeout(read_timeout)
        return reused

    def _new(self, timeout: float) -> http.client.HTTPConnection:
        proxy = _proxy_for(self.scheme, self.host)
        self.proxied = proxy is not None and self.scheme == "http"
        if self.scheme == "https":
            import ssl

            context = ssl.create_default_context()
            if proxy is not None:
                conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=timeout,
                                                   context=context)
                conn.set_tunnel(self.host, self.port)
                return conn
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=context)
        if proxy is not None:
            return http.client.HTTPConnection(proxy[0], proxy[1], timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class Session:
    """Requests to one server (`base`: scheme://host:port) over one keep-alive connection."""

    def __init__(self, base: str):
        parts = urlsplit(base)
        self.base = base.rstrip("/")
        self.headers: dict[str, str] = {"User-Agent": USER_AGENT}
        self._connection = _Connection(parts.scheme, parts.hostname or "", parts.port or
                                       (443 if parts.scheme == "https" else 80), 10.0)
        self._host_header = parts.netloc

    def close(self) -> None:
        self._connection.drop()

    def fresh(self) -> Session:
        """A session to the same server with the same headers, on a connection of its own (for
        a forked process: the parent's connection stays the parent's)."""
        new = Session(self.base)
        new.headers = dict(self.headers)
        return new

    def request(self, method: str, path: str, timeout: tuple[float, float],
                json: object = None, headers: dict[str, str] | None = None) -> Response:
        """`path` below the base (no leading slash). The body is read when the caller asks."""
        body = None
        sent = {**self.headers, "Host": self._host_header, **(headers or {})}
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        target = f"/{path}"
        connection = self._connection
        for attempt in (1, 2):
            reused = connection.open(*timeout)
            assert connection.conn is not None
            url = f"{self.base}{target}" if connection.proxied else target
            conn = connection.conn
            try:
                conn.request(method, url, body=body, headers=sent)
                sock = conn.sock
                raw = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                connection.drop()
                # a kept-alive connection the server had closed meanwhile: once more on a new
                # one (a POST to /jobs too: the same request joins the same build)
                stale = isinstance(e, http.client.RemoteDisconnected | ConnectionResetError
                                   | BrokenPipeError)
                if reused and stale and attempt == 1 and (method in _IDEMPOTENT or json is not None):
                    continue
                raise WireError(e, "read") from None
            # (an answer after which the server closes the connection owns its socket now:
            # http.client lets go of it, and the next request connects anew)
            drop = raw.close if raw.will_close else connection.drop
            return Response(raw, method, target, sock, drop)
        raise AssertionError("unreachable")


def _proxy_for(scheme: str, host: str) -> tuple[str, int] | None:
    """The proxy the environment names for this scheme and host, as (host, port); None for none.
    The environment is looked at first, so that a client without proxies never loads urllib's
    proxy logic."""
    if not any(k.lower().endswith("_proxy") for k in os.environ):
        return None
    import urllib.request

    if urllib.request.proxy_bypass(host):
        return None
    url = urllib.request.getproxies().get(scheme)
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.hostname or "", parts.port or 80
