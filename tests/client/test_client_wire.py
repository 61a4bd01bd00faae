"""The client's own HTTP/1.1 (mistry_client/wire.py) against canned answers from a real socket:
every framing a server may use, answers that are not HTTP or end early, keep-alive reuse, TLS
with certificate checks, proxies from the environment (plain and CONNECT), and bodies spliced
into files."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import subprocess
import threading

import pytest
from support import relay

from mistry_client.wire import CutShort, NoAnswer, NotHttp, Session, WireError

TIMEOUTS = (5.0, 5.0)


class LocalServer:
    """A listener on 127.0.0.1; each connection goes to `serve(conn)` on a thread of its own."""

    def __init__(self):
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.close()


class CannedServer(LocalServer):
    """Answers each request (read up to its blank line) with the next canned bytes; counts the
    connections, keeps the request heads it saw; None as an answer closes the connection."""

    def __init__(self, answers: list[bytes | None], tls: ssl.SSLContext | None = None):
        self.answers = list(answers)
        self.heads: list[bytes] = []
        self.tls = tls
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            data = b""
            while self.answers:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                head, _, data = data.partition(b"\r\n\r\n")
                self.heads.append(head)
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                while length and len(data) < length[0]:
                    data += conn.recv(65536)
                data = data[length[0]:] if length else data
                answer = self.answers.pop(0)
                if answer is None:
                    return
                conn.sendall(answer)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


@pytest.fixture
def canned():
    servers = []

    def make(*answers, tls=None):
        servers.append(CannedServer(list(answers), tls))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _get(server: CannedServer, path: str = "x", scheme: str = "http", host: str = "127.0.0.1",
         session: Session | None = None):
    session = session or Session(f"{scheme}://{host}:{server.port}")
    return session, session.request("GET", path, TIMEOUTS)


def test_every_framing_a_server_may_use(canned):
    server = canned(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        b"X-Folded: one\r\n  two\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"t\"\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nto the end",
    )
    session, r = _get(server)
    assert (r.status_code, r.reason, r.content) == (200, "OK", b"hello")
    _, r = _get(server, session=session)
    assert r.content == b"abcde" and r.headers.get("x-folded") == "one two"
    _, r = _get(server, session=session)
    assert (r.status_code, r.headers.get("ETag"), r.content) == (304, '"t"', b"")
    _, r = _get(server, session=session)
    assert r.content == b"to the end"
    assert server.connections == 1  # kept alive throughout, closed by the last answer
    assert server.heads[0].startswith(b"GET /x HTTP/1.1\r\n")


def test_a_body_in_one_reused_buffer_and_a_live_stream_in_pieces(canned):
    body = bytes(range(256)) * 1000
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\nab\ncd\r\n" + b"1\r\ne\r\n0\r\n\r\n")
    session, r = _get(server)
    assert b"".join(bytes(p) for p in r.reused_pieces(4096)) == body
    _, r = _get(server, session=session)
    assert b"".join(r.iter_content(chunk_size=None)) == b"ab\ncde"
    assert server.connections == 1


@pytest.mark.parametrize("answer, error", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", NotHttp),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", NotHttp),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n", NotHttp),
    (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", NotHttp),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello", NotHttp),
    (b"HTTP/1.1 200 OK\r\nContent-Len", CutShort),
    (None, NoAnswer),
])
def test_answers_that_are_not_http_or_end_early_fail_in_their_own_words(canned, answer, error):
    server = canned(answer)
    with pytest.raises(WireError) as raised:
        _get(server)
    assert isinstance(raised.value.args[0], error)


@pytest.mark.parametrize("answer, error", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", CutShort),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", NotHttp),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", NotHttp),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab", CutShort),
])
def test_a_body_cut_or_badly_chunked_fails_when_read(canned, answer, error):
    server = canned(answer)
    _, r = _get(server)
    with pytest.raises(WireError) as raised:
        r.content  # noqa: B018 - reading is the test
    assert isinstance(raised.value.args[0], error)


def test_a_kept_alive_connection_the_server_closed_is_made_again_once(canned):
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
    session, r = _get(server)
    assert r.content == b"ok"
    _, r = _get(server, session=session)  # the server hangs up on it: asked again anew
    assert r.content == b"again" and server.connections == 2


def test_a_body_not_read_to_its_end_is_not_reused(canned):
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    session, r = _get(server)
    r.close()
    _, r = _get(server, session=session)
    assert r.content == b"ok" and server.connections == 2


def test_line_ends_in_a_header_or_a_path_are_refused_before_sending(canned):
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    session = Session(f"http://127.0.0.1:{server.port}")
    with pytest.raises(ValueError):
        session.request("GET", "x", TIMEOUTS, headers={"Authorization": "Bearer a\r\nX-Evil: 1"})
    with pytest.raises(ValueError):
        session.request("GET", "x HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /y", TIMEOUTS)
    assert server.heads == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost (and its key), made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _tls_server(certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def test_https_checks_the_certificate_against_the_ca_store(canned, certificate, monkeypatch):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure"
    server = canned(answer, answer, tls=_tls_server(certificate))
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")  # a store without our certificate
    with pytest.raises(WireError) as raised:
        _get(server, scheme="https", host="localhost")
    assert isinstance(raised.value.args[0], ssl.SSLCertVerificationError)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    _, r = _get(server, scheme="https", host="localhost")
    assert not r.spliceable()  # TLS: the bytes on the socket are not the body
    assert r.content == b"secure"


class ForwardProxy(LocalServer):
    """An HTTP proxy: keeps the request line of what it is asked; CONNECT opens a tunnel to the
    named port on 127.0.0.1, and a plain request is answered by `answer`."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.lines: list[bytes] = []
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        line = data.split(b"\r\n", 1)[0]
        self.lines.append(line)
        if not line.startswith(b"CONNECT "):
            conn.sendall(self.answer)
            conn.close()
            return
        port = int(line.split()[1].rsplit(b":", 1)[1])
        upstream = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        relay(conn, upstream)


def test_proxies_from_the_environment_plain_and_tunnelled(canned, certificate, monkeypatch):
    proxy = ForwardProxy(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")
    tls = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ntunnel!!", tls=_tls_server(certificate))
    try:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("no_proxy", "")
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
        session = Session("http://build.example:8462")
        assert session.request("GET", "healthz", TIMEOUTS).content == b"proxied"
        _, r = _get(tls, scheme="https", host="localhost")
        assert r.content == b"tunnel!!"
        assert proxy.lines == [b"GET http://build.example:8462/healthz HTTP/1.1",
                               f"CONNECT localhost:{tls.port} HTTP/1.1".encode()]
    finally:
        proxy.close()


# A body moved into a file inside the kernel (Response.splice_into): exact, the connection kept,
# and every way it can go wrong on the socket's side or the file's.

SPLICED = bytes(range(251)) * 12_000 + b"end"  # about 3 MiB: several pipefuls


def _splice(r, path, offset=0):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    pieces = []
    try:
        for n in r.splice_into(fd, offset, 1 << 20, 128 << 10):
            pieces.append(n)
    finally:
        os.close(fd)
    return pieces


def test_a_body_spliced_into_a_file_is_exact_and_the_connection_is_kept(canned, tmp_path):
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SPLICED) + SPLICED,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    session, r = _get(server)
    assert r.spliceable()
    pieces = _splice(r, tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == SPLICED and sum(pieces) == len(SPLICED)
    assert max(pieces) <= 1 << 20 and len(pieces) >= 3
    _, r = _get(server, session=session)
    assert r.content == b"ok" and server.connections == 1
    _, r = _get(server, session=session)
    assert not r.spliceable()  # chunked: read and written instead


def test_a_spliced_body_goes_on_at_an_offset(canned, tmp_path):
    """A resumed download (Range) writes behind what the file already holds."""
    (tmp_path / "f").write_bytes(b"x" * 1000)
    server = canned(b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n\r\n" % len(SPLICED)
                    + SPLICED)
    _, r = _get(server)
    _splice(r, tmp_path / "f", offset=1000)
    assert (tmp_path / "f").read_bytes() == b"x" * 1000 + SPLICED


def test_a_spliced_body_cut_short_fails_with_what_was_yielded_in_the_file(canned, tmp_path):
    half = SPLICED[:len(SPLICED) // 2]
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SPLICED) + half)
    _, r = _get(server)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    yielded = 0
    with pytest.raises(WireError) as raised:
        for n in r.splice_into(fd, 0, 1 << 20, 128 << 10):
            yielded += n
    os.close(fd)
    assert isinstance(raised.value.args[0], CutShort)
    assert (tmp_path / "f").read_bytes()[:yielded] == half[:yielded] and yielded <= len(half)


class StallingServer(LocalServer):
    """Sends a head and part of the body, then nothing, until closed."""

    def __init__(self):
        self.release = threading.Event()
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SPLICED)
                     + SPLICED[:100_000])
        self.release.wait()
        conn.close()


def test_a_spliced_body_that_stalls_runs_out_of_the_read_timeout(tmp_path):
    server = StallingServer()
    try:
        r = Session(f"http://127.0.0.1:{server.port}").request("GET", "x", (5.0, 5.0))
        r._sock.settimeout(0.3)  # the head is in: from here only the stall can run out of time
        with pytest.raises(WireError) as raised:
            _splice(r, tmp_path / "f")
        assert raised.value.timeout
    finally:
        server.release.set()
        server.close()


def _file_side_of_splice_fails(monkeypatch, error: int) -> None:
    """Fault injection: every splice(2) into a file (the one with an offset) fails with `error`;
    the socket's side works."""
    real = os.splice

    def splice(src, dst, count, offset_src=None, offset_dst=None, flags=0):
        if offset_dst is not None:
            raise OSError(error, os.strerror(error))
        return real(src, dst, count, offset_src, offset_dst, flags)

    monkeypatch.setattr(os, "splice", splice)


def test_a_file_system_without_splice_gets_the_body_written(canned, tmp_path, monkeypatch):
    """splice(2) into the file refused with EINVAL (a file system without it)."""
    _file_side_of_splice_fails(monkeypatch, errno.EINVAL)
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SPLICED) + SPLICED)
    _, r = _get(server)
    assert sum(_splice(r, tmp_path / "f")) == len(SPLICED)
    assert (tmp_path / "f").read_bytes() == SPLICED


def test_a_full_disk_under_a_splice_is_the_files_error_not_the_connections(
        canned, tmp_path, monkeypatch):
    """ENOSPC from the file's side goes up as it is (not a WireError a retry would answer), and
    the connection is not used again."""
    _file_side_of_splice_fails(monkeypatch, errno.ENOSPC)
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SPLICED) + SPLICED,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    session, r = _get(server)
    with pytest.raises(OSError) as raised:
        _splice(r, tmp_path / "f")
    assert raised.value.errno == errno.ENOSPC and not isinstance(raised.value, WireError)
    _, r = _get(server, session=session)
    assert r.content == b"ok" and server.connections == 2


def _sink_of_spliced(path):
    """download.FileSink of a manifest with one file: SPLICED."""
    from blake3 import blake3

    from mistry_client.download import FileSink
    from mistry_client.manifest import Manifest

    manifest = Manifest.of({"entries": [{"path": "f", "type": "file", "size": len(SPLICED),
                                         "sha256": "0" * 64,
                                         "blake3": blake3(SPLICED).hexdigest()}]})
    return FileSink(str(path), manifest, 0, 0o644, 0o022)


@pytest.mark.parametrize("body, error", [
    (SPLICED, None),
    (SPLICED[:-1] + b"X", "BLAKE3"),
    (SPLICED + b"more", "got more than the manifest's"),
])
def test_a_file_sink_receives_a_spliced_body_and_checks_it(canned, tmp_path, body, error):
    """download.FileSink.receive: the spliced bytes are hashed as read back from the file."""
    from mistry_client.errors import TransferError

    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    _, r = _get(server)
    sink = _sink_of_spliced(tmp_path / "f")
    if error is None:
        assert sum(sink.receive(r)) == len(SPLICED)
        sink.finish()
        assert (tmp_path / "f").read_bytes() == SPLICED
        return
    with pytest.raises(TransferError, match=error):
        for _ in sink.receive(r):
            pass
        sink.finish()
    sink.close()


def test_a_file_sink_reserves_a_large_files_blocks_before_it_arrives(canned, tmp_path,
                                                                     monkeypatch):
    from mistry_client import preallocate

    monkeypatch.setattr(preallocate, "FROM", len(SPLICED))
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(SPLICED) + SPLICED)
    _, r = _get(server)
    sink = _sink_of_spliced(tmp_path / "f")
    pieces = sink.receive(r)
    first = next(pieces)
    st = os.fstat(sink.fd)
    assert st.st_size == first < len(SPLICED) <= st.st_blocks * 512
    assert first + sum(pieces) == len(SPLICED)
    sink.finish()
    assert (tmp_path / "f").read_bytes() == SPLICED
