"""The HTTP server (mistryd/web/http.py): granian's worker on mistryd's own socket, a real server
on 127.0.0.1 with small WSGI apps: what the app can rely on (the module's docstring)."""

import http.client
import importlib.metadata
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from flask import Flask, Response, request

from mistryd.config import from_dict
from mistryd.web.http import FileAnswer, make_http_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def serve(tmp_path):
    """serve(app, **config) -> (the HttpServer, its port); stopped at the end."""
    started = []

    def start(app, **config):
        (tmp_path / "projects").mkdir(exist_ok=True)
        cfg = from_dict({"projects_path": str(tmp_path / "projects"),
                         "build_path": str(tmp_path / "builds"), "addr": "127.0.0.1:0", **config})
        server = make_http_server(app, cfg)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        return server, server.effective_port

    yield start
    for server, thread in started:
        server.stop()
        thread.join(10)
        assert not thread.is_alive()


def get(port: int, path: str, method: str = "GET", body: bytes | None = None,
        timeout: float = 10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), data


def test_the_pinned_granian_is_the_installed_one():
    """mistryd uses granian's worker class directly: another version must be checked first."""
    pin = re.search(r'"granian==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and importlib.metadata.version("granian") == pin.group(1)


def test_small_streamed_and_file_answers(serve, tmp_path):
    data = bytes(range(256)) * 40_000  # 10 MB: several reads of a file answer
    (tmp_path / "f").write_bytes(data)
    app = Flask("t")

    @app.get("/small")
    def small():
        return Response(b"hello", status=201)

    @app.get("/stream")
    def stream():
        return Response(b"%d," % i for i in range(10_000))

    @app.get("/file")
    def file():
        f = open(tmp_path / "f", "rb")
        f.seek(100)
        wrapper = request.environ["wsgi.file_wrapper"](f)
        assert isinstance(wrapper, FileAnswer)
        response = Response(wrapper, direct_passthrough=True)
        response.content_length = 5_000_000  # a range of the file: no further than that
        return response

    _, port = serve(app)
    assert get(port, "/small")[::2] == (201, b"hello")
    assert get(port, "/stream")[2] == b"".join(b"%d," % i for i in range(10_000))
    status, headers, body = get(port, "/file")
    assert status == 200 and body == data[100:5_000_100]


def test_a_body_over_the_limit_is_413_with_or_without_content_length(serve):
    app = Flask("t")
    app.config["MAX_CONTENT_LENGTH"] = 1000

    @app.post("/echo")
    def echo():
        return Response(b"%d" % len(request.get_data()))

    @app.errorhandler(413)
    def too_large(e):
        return Response(b"too large", status=413)

    _, port = serve(app, max_body_bytes=1000)
    assert get(port, "/echo", "POST", b"x" * 1000)[::2] == (200, b"1000")
    assert get(port, "/echo", "POST", b"x" * 1001)[0] == 413
    for size, expected in ((1000, b"HTTP/1.1 200 "), (1001, b"HTTP/1.1 413 ")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (size, b"y" * size))
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(expected), (size, answer[:100])


def test_a_stream_ends_when_its_client_hangs_up(serve):
    closed = threading.Event()
    app = Flask("t")

    @app.get("/beats")
    def beats():
        def forever():
            try:
                while True:
                    time.sleep(0.05)
                    yield b" "
            finally:
                closed.set()
        return Response(forever())

    server, port = serve(app)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /beats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        assert server.in_flight == 1
    assert closed.wait(10)
    deadline = time.monotonic() + 10
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.in_flight == 0


def test_a_drain_lets_requests_in_progress_end_and_refuses_new_ones(serve):
    started, release = threading.Event(), threading.Event()
    app = Flask("t")

    @app.get("/slow")
    def slow():
        started.set()
        release.wait(10)
        return "done"

    server, port = serve(app)
    answers = []
    client = threading.Thread(target=lambda: answers.append(get(port, "/slow")))
    client.start()
    assert started.wait(10)
    drain = threading.Thread(target=server.drain, args=(30,))
    drain.start()
    time.sleep(0.3)
    assert drain.is_alive()  # waiting for the request in progress
    with pytest.raises(OSError):  # a new connection is not served (here: no other process
        get(port, "/slow", timeout=1)  # on the socket takes it; it is reset at the end)
    release.set()
    client.join(10)
    drain.join(10)
    assert not drain.is_alive() and answers[0][::2] == (200, b"done")
