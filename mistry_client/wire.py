"""HTTP/1.1 for the client, on sockets: one keep-alive connection per Session, separate connect and
read timeouts, bodies read on demand (a live stream piece by piece, a large file into one reused
buffer), and every failure as one `WireError`.

What the client needs from HTTP is small: GET and POST to one server, JSON, a streamed body, a
Range header, a deadline. `requests` did it first; importing it (urllib3, idna, charset detection,
certifi) cost about 60 ms of a cached `mistry build` that took about 100 ms in all. The standard
library's `http.client` came next: it still costs 18 ms to import (it parses headers with the
`email` package and loads `ssl` up front), a fifth of the command. So the client reads answers
itself: a status line, headers (at most 100, lines of at most 64 KiB, as http.client allows), and a
body framed by Content-Length, chunked, or the connection's end. Proxies come from the usual
environment variables (http_proxy, https_proxy, no_proxy); https loads `ssl` when it is used and
checks the server's certificate against the system's CA store (SSL_CERT_FILE or SSL_CERT_DIR
point elsewhere)."""

from __future__ import annotations

import errno
import json as jsonlib
import os
import select
import socket
from collections.abc import Callable, Iterator
from functools import partial
from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

USER_AGENT = "mistry (python)"
_IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}
_MAX_LINE = 65536
_MAX_HEADERS = 100
_READ = 64 << 10  # what a live stream asks the socket for at most
_CUT = "the connection ended in the middle of the answer"


class NotHttp(Exception):
    """The answer is not HTTP: no status line, a line too long, too many headers, a bad chunk."""


class CutShort(ConnectionResetError):
    """The connection ended before the answer did."""


class NoAnswer(ConnectionResetError):
    """The server closed the connection without answering (a kept-alive connection it had
    closed meanwhile, or a server that hung up)."""


class WireError(Exception):
    """The request did not get a whole answer. `phase` says when: "connect" (no connection) or
    "read" (no answer, or a broken one); `timeout` whether it ran out of time."""

    def __init__(self, cause: BaseException, phase: str):
        super().__init__(cause)
        self.__cause__ = cause
        self.phase = phase
        self.timeout = isinstance(cause, TimeoutError)


class Headers(dict):
    """An answer's headers by lower-case name (repeated ones joined with ", ")."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class _Body:
    """Reads one answer's body from the connection's buffered reader, as its framing says:
    `length` bytes, chunks, or everything until the connection ends (length None, not chunked).
    """

    def __init__(self, fp, length: int | None, chunked: bool):
        self.fp = fp
        self.left = length  # bytes of the body, or of the current chunk when chunked
        self.chunked = chunked
        self.done = length == 0 and not chunked
        if chunked:
            self.left = 0

    def readinto(self, view: memoryview) -> int:
        """Up to len(view) bytes, as many as there are before the body's end (0: the end);
        blocks until the view is full or the body ends."""
        got = 0
        while got < len(view) and not self.done:
            n = self._some(view[got:], fill=True)
            if not n:
                break
            got += n
        return got

    def read1(self) -> bytes:
        """What has arrived (at least one byte), b"" at the body's end."""
        buffer = bytearray(_READ)
        n = self._some(memoryview(buffer), fill=False)
        return bytes(buffer[:n])

    def read_all(self) -> bytes:
        out = bytearray()
        buffer = memoryview(bytearray(_READ))
        while n := self._some(buffer, fill=True):
            out += buffer[:n]
        return bytes(out)

    def _some(self, view: memoryview, fill: bool) -> int:
        if self.done:
            return 0
        if self.chunked and not self.left and not self._next_chunk():
            return 0
        if self.left is not None:
            view = view[:self.left]
        n = self.fp.readinto(view) if fill else self.fp.readinto1(view)
        if not n:
            if self.left is None:  # delimited by the connection's end: this is it
                self.done = True
                return 0
            raise CutShort(_CUT)
        if self.left is not None:
            self.left -= n
            if not self.left and not self.chunked:
                self.done = True
            elif not self.left and self._line() != b"":  # the CRLF after a chunk's data
                raise NotHttp("a chunk of the answer does not end where its size says")
        return n

    def _next_chunk(self) -> bool:
        """Reads the next chunk's size line; False at the last chunk (its trailers read)."""
        line = self._line().split(b";", 1)[0].strip()
        try:
            size = int(line, 16)
        except ValueError:
            raise NotHttp(f"a bad chunk size {line[:40]!r} in the answer") from None
        if size < 0:
            raise NotHttp("a negative chunk size in the answer")
        if size == 0:
            while self._line() != b"":  # trailers
                pass
            self.done = True
            return False
        self.left = size
        return True

    def _line(self) -> bytes:
        return _read_line(self.fp)


def _read_line(fp) -> bytes:
    """One line without its line end; CutShort when the connection ends first."""
    line = fp.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise NotHttp("a line of the answer is longer than 64 KiB")
    if not line.endswith(b"\n"):
        raise CutShort(_CUT)
    return line.rstrip(b"\r\n")


class Response:
    """An answer whose body is read on demand; `close()` (or the `with` block) ends it, and a
    connection whose body was not read to the end is closed rather than used again."""

    def __init__(self, method: str, path: str, status: int, reason: str, headers: Headers,
                 body: _Body, sock: socket.socket, release: Callable[[bool], None]):
        self.method = method
        self.path = path
        self.status_code = status
        self.reason = reason
        self.headers = headers
        self._body = body
        self._sock = sock
        self._release = release  # release(reusable): the connection is done with this answer
        self._content: bytes | None = None
        self._closed = False

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self._reading(self._body.read_all)
            self.close()
        return self._content

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return jsonlib.loads(self.content)

    def iter_content(self, chunk_size: None = None) -> Iterator[bytes]:
        """The body in the pieces it arrives in (a live stream: each as soon as it is there).
        WireError when the connection breaks. (`chunk_size=None`: as requests spells it.)"""
        return self._pieces(self._body.read1)

    def reused_pieces(self, size: int) -> Iterator[memoryview]:
        """The body in pieces of up to `size` bytes, all read into one buffer: a piece is valid
        only until the next is asked for. For bodies of hundreds of MiB, where a new piece for
        every read (iter_content) costs an allocation and its page faults each time, about as
        much as the read itself. WireError when the connection breaks."""
        view = memoryview(bytearray(size))
        return self._pieces(lambda: view[:self._body.readinto(view)])

    def spliceable(self) -> bool:
        """Whether the body can move into a file inside the kernel (splice_into): Linux, a plain
        TCP connection (not TLS) and a body framed by Content-Length."""
        body = self._body
        return _SPLICE and type(self._sock) is socket.socket and not body.chunked \
            and body.left is not None and not body.done

    def splice_into(self, fd: int, offset: int, step: int, write: int) -> Iterator[int]:
        """The body written into the file `fd` from `offset` on, in pieces of up to `step`
        bytes, each into the file `write` bytes at a time; yields each piece's size once it is
        in the file. The bytes go from the socket through a pipe into the page cache (splice(2))
        without a copy through this process: for a large file, about a third less time than
        reading and writing it. (Only when `spliceable()`.) WireError when the connection
        breaks: what was yielded is in the file."""
        body = self._body
        assert body.left is not None
        left = body.left
        pipe: tuple[int, int] | None = None
        try:
            # what the buffered reader holds past the head (or one read): after this it holds
            # nothing, and the rest of the body is the socket's
            head = self._reading(lambda: _not_empty(body.fp.read1(min(left, _READ))))
            offset += _pwrite_all(fd, head, offset)
            body.left = left = left - len(head)
            yield len(head)
            pipe = os.pipe2(os.O_CLOEXEC)
            into, out = pipe[1], pipe[0]
            _widen(into, step)
            while left:
                n = self._reading(partial(_splice_some, self._sock, into, min(step, left)))
                offset += _pipe_to_file(out, fd, n, offset, write)
                body.left = left = left - n
                yield n
            body.done = True
        except BaseException:  # the file's own errors (a full disk) go up as they are
            self._end(reusable=False)
            raise
        finally:
            if pipe:
                os.close(pipe[0])
                os.close(pipe[1])
        self.close()

    def _pieces(self, read: Callable[[], Any]) -> Iterator[Any]:
        while piece := self._reading(read):
            yield piece
        self.close()

    def _reading(self, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except (OSError, NotHttp, ValueError) as e:
            # ValueError: a socket shut by `shutdown` (the deadline) under a buffered read
            self._end(reusable=False)
            raise WireError(e, "read") from None

    def shutdown(self) -> None:
        """Ends a read blocked on this answer from another thread (the deadline's timer)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._end(reusable=self._body.done)

    def _end(self, reusable: bool) -> None:
        if not self._closed:
            self._closed = True
            self._release(reusable)


class _Connection:
    """One keep-alive connection, made again when it was dropped or the server closed it."""

    def __init__(self, scheme: str, host: str, port: int):
        self.scheme, self.host, self.port = scheme, host, port
        self.sock: socket.socket | None = None
        self.fp: Any = None
        self.proxied = False

    def drop(self) -> None:
        if self.sock is not None:
            self.fp.close()
            self.sock.close()
            self.sock = self.fp = None

    def open(self, connect_timeout: float, read_timeout: float) -> bool:
        """Connected, with the read timeout set; True when it is a connection used before."""
        reused = self.sock is not None
        if not reused:
            try:
                self._connect(connect_timeout)
            except (OSError, NotHttp) as e:
                self.drop()
                raise WireError(e, "connect") from None
        assert self.sock is not None
        self.sock.settimeout(read_timeout)
        return reused

    def _connect(self, timeout: float) -> None:
        proxy = _proxy_for(self.scheme, self.host)
        self.proxied = proxy is not None and self.scheme == "http"
        host, port = proxy or (self.host, self.port)
        # an ASCII name as bytes: the socket module runs a str through the IDNA codec first,
        # whose import (unicodedata, stringprep) costs about 2 ms of every command
        name: str | bytes = host.encode() if host.isascii() else host
        self.sock = socket.create_connection((name, port), timeout)  # type: ignore[arg-type]
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fp = self.sock.makefile("rb")
        if self.scheme != "https":
            return
        if proxy is not None:  # a tunnel through the proxy, then TLS with the server
            self.sock.sendall(f"CONNECT {self.host}:{self.port} HTTP/1.1\r\n"
                              f"Host: {self.host}:{self.port}\r\n\r\n".encode())
            _, status, reason, _ = _read_head(self.fp)
            if status != 200:
                raise OSError(f"the proxy refused the tunnel: {status} {reason}")
        import ssl

        context = ssl.create_default_context()
        self.fp.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host)
        self.fp = self.sock.makefile("rb")


_SPLICE = hasattr(os, "splice")


def _not_empty(data: bytes) -> bytes:
    if not data:
        raise CutShort(_CUT)
    return data


def _splice_some(sock: socket.socket, pipe: int, most: int) -> int:
    """Moves up to `most` bytes (at least one) from the socket into the pipe; the socket's
    timeout holds while nothing has arrived (TimeoutError), CutShort at the connection's end."""
    while True:
        try:
            n = os.splice(sock.fileno(), pipe, most)
        except BlockingIOError:  # a socket with a timeout does not block: wait for bytes
            timeout = sock.gettimeout()
            poll = select.poll()
            poll.register(sock.fileno(), select.POLLIN)
            if not poll.poll(None if timeout is None else timeout * 1000):
                raise TimeoutError("timed out") from None
            continue
        if not n:
            raise CutShort(_CUT)
        return n


def _pipe_to_file(pipe: int, fd: int, n: int, offset: int, write: int) -> int:
    """The `n` bytes in the pipe into the file at `offset`, `write` bytes per call (splice, or
    read and written where the file system takes no splice); returns n."""
    left = n
    while left:
        try:
            left -= os.splice(pipe, fd, min(left, write), offset_dst=offset + n - left)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            data = os.read(pipe, min(left, write))
            left -= _pwrite_all(fd, data, offset + n - left)
    return n


def _pwrite_all(fd: int, data: bytes, offset: int) -> int:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return len(data)


def _widen(pipe: int, size: int) -> None:
    """Makes the pipe hold `size` bytes if the system allows (a 64 KiB pipe moves a large file
    in 16 times as many calls, and about half as fast): where it does not, the pipe stays as it
    is."""
    import fcntl

    try:
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        pass


def _read_head(fp) -> tuple[str, int, str, Headers]:
    """The version, status, reason and headers of an answer (1xx answers skipped)."""
    while True:
        line = fp.readline(_MAX_LINE + 1)
        if not line:
            raise NoAnswer("the server closed the connection without answering")
        if len(line) > _MAX_LINE:
            raise NotHttp("the answer's first line is longer than 64 KiB")
        version, _, rest = line.rstrip(b"\r\n").partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise NotHttp(f"the answer does not begin as HTTP does: {line[:40]!r}")
        headers = Headers()
        name = ""
        for count in range(_MAX_HEADERS + 1):  # (the last turn reads the blank line or fails)
            line = _read_line(fp)
            if line == b"":
                break
            if count == _MAX_HEADERS:
                raise NotHttp(f"the answer has more than {_MAX_HEADERS} header lines")
            text = line.decode("latin-1")
            if text[:1] in (" ", "\t") and name:  # a folded line continues the last header
                headers[name] += " " + text.strip()
                continue
            name, colon, value = text.partition(":")
            if not colon:
                raise NotHttp(f"the answer has a header line without a colon: {text[:40]!r}")
            name = name.strip().lower()
            headers[name] = f"{headers[name]}, {value.strip()}" if name in headers \
                else value.strip()
        status = int(code)
        if not 100 <= status < 200:
            return version.decode("latin-1"), status, reason.decode("latin-1"), headers


def _body_of(fp, method: str, version: str, status: int, headers: Headers) -> tuple[_Body, bool]:
    """The answer's body reader, and whether the connection closes after it."""
    tokens = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
    will_close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    if method == "HEAD" or status in (204, 304):
        return _Body(fp, 0, False), will_close
    if headers.get("Transfer-Encoding", "").lower().rsplit(",", 1)[-1].strip() == "chunked":
        return _Body(fp, None, True), will_close
    lengths = {v.strip() for v in headers.get("Content-Length", "").split(",") if v.strip()}
    if not lengths:
        return _Body(fp, None, False), True  # to the connection's end
    if len(lengths) > 1 or not next(iter(lengths)).isdigit():
        raise NotHttp(f"the answer has a bad Content-Length {headers.get('Content-Length')!r}")
    return _Body(fp, int(lengths.pop()), False), will_close


class Session:
    """Requests to one server (`base`: scheme://host:port) over one keep-alive connection."""

    def __init__(self, base: str):
        parts = urlsplit(base)
        self.base = base.rstrip("/")
        self.headers: dict[str, str] = {"User-Agent": USER_AGENT}
        self._connection = _Connection(parts.scheme, parts.hostname or "", parts.port or
                                       (443 if parts.scheme == "https" else 80))
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
        body = b""
        sent = {**self.headers, "Host": self._host_header, "Accept-Encoding": "identity",
                **(headers or {})}
        if json is not None:
            body = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        if body or method in ("POST", "PUT", "PATCH"):
            sent["Content-Length"] = str(len(body))
        target = f"/{path}"
        _check_request(method, target, sent)
        connection = self._connection
        for attempt in (1, 2):
            reused = connection.open(*timeout)
            url = f"{self.base}{target}" if connection.proxied else target
            head = "".join(f"{k}: {v}\r\n" for k, v in sent.items())
            sock, fp = connection.sock, connection.fp
            assert sock is not None
            try:
                sock.sendall(f"{method} {url} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body)
                version, status, reason, answer = _read_head(fp)
                reader, will_close = _body_of(fp, method, version, status, answer)
            except (OSError, NotHttp) as e:
                connection.drop()
                # a kept-alive connection the server had closed meanwhile: once more on a new
                # one (a POST to /jobs too: the same request joins the same build)
                stale = isinstance(e, ConnectionResetError | BrokenPipeError)
                if reused and stale and attempt == 1 and (method in _IDEMPOTENT or json is not None):
                    continue
                raise WireError(e, "read") from None

            def release(reusable: bool, will_close: bool = will_close) -> None:
                if not reusable or will_close:
                    connection.drop()

            return Response(method, target, status, reason, answer, reader, sock, release)
        raise AssertionError("unreachable")


def _check_request(method: str, target: str, headers: dict[str, str]) -> None:
    """No byte that would end a line or the request line early: a token or a path with a line
    end in it could smuggle a header or a second request (ValueError)."""
    if any(c <= " " or c == "\x7f" for c in method + target):
        raise ValueError(f"a request path may not hold spaces or control characters: {target!r}")
    for name, value in headers.items():
        if any(c in "\r\n\0" for c in name + value) or ":" in name:
            raise ValueError(f"the request header {name!r} holds a line end")


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
