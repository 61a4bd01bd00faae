"""mistryd's HTTP server (mistryd/web/http.py, loop.py) on a real socket: waitress's I/O loop on
epoll with many idle connections open, answers held for the I/O thread, streams sent as they are
written, large answers to a slow reader, hung-up clients noticed at once."""

import socket
import threading
import time

import pytest
from flask import Flask, Response, request
from support import wait_for

from mistryd.config import from_dict
from mistryd.web.http import WHEN_CLIENT_GONE, make_http_server, stop_http_server

BIG = 32 << 20  # more than the sockets' buffers hold: sent over many turns of the loop


@pytest.fixture
def served(tmp_path):
    (tmp_path / "projects").mkdir()
    config = from_dict({"projects_path": str(tmp_path / "projects"),
                        "build_path": str(tmp_path / "builds"), "addr": "127.0.0.1:0",
                        "http_threads": 16})
    app = Flask("test")
    release = threading.Event()
    gone = threading.Event()

    @app.get("/hit")
    def hit():
        return {"cached": True}

    @app.get("/big")
    def big():
        return Response(b"x" * BIG, mimetype="application/octet-stream")

    @app.get("/stream")
    def stream():
        def lines():
            yield "first\n"
            release.wait(60)
            yield "second\n"
        return Response(lines(), mimetype="text/plain")

    @app.get("/wait")
    def wait():
        request.environ[WHEN_CLIENT_GONE](gone.set)
        gone.wait(60)
        return "late"

    http = make_http_server(app, config)
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    yield http, release, gone
    stop_http_server(http)
    thread.join(10)
    http.close()


def ask(port: int, path: str, sock: socket.socket | None = None) -> bytes:
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    head, _, body = head.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    if sock is None:
        s.close()
    return head.split(b"\r\n")[0] + b"\n" + body


def test_answers_with_hundreds_of_idle_connections_open_and_closed(served):
    http, _, _ = served
    port = http.effective_port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        keep = socket.create_connection(("127.0.0.1", port), timeout=10)
        for _ in range(50):  # one kept-alive connection, answered again and again
            assert ask(port, "/hit", keep) == b'HTTP/1.1 200 OK\n{"cached":true}\n'
        wait_for(lambda: len(http._map) >= 303, interval=0.05)  # 301 connections, listener, trigger
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: len(http._map) == 3, interval=0.05)  # every closed connection left the loop
    assert ask(port, "/hit", keep).endswith(b'{"cached":true}\n')
    keep.close()


def test_a_large_answer_reaches_a_slow_reader_whole(served):
    http, _, _ = served
    s = socket.create_connection(("127.0.0.1", http.effective_port), timeout=10)
    s.sendall(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    time.sleep(0.5)  # the server's buffer is full meanwhile: it must come back to it
    got = b""
    while not got.endswith(b"x" * 100) or len(got) < BIG:
        chunk = s.recv(1 << 20)
        assert chunk
        got += chunk
    assert got.count(b"x") == BIG
    s.close()


def test_a_streamed_answer_is_sent_as_it_is_written(served):
    http, release, _ = served
    s = socket.create_connection(("127.0.0.1", http.effective_port), timeout=5)
    s.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    got = b""
    while b"first" not in got:  # before the stream's second part is even made
        got += s.recv(65536)
    release.set()
    while b"second" not in got:
        got += s.recv(65536)
    s.close()


def test_a_waiting_request_hears_at_once_that_its_client_hung_up(served):
    http, _, gone = served
    s = socket.create_connection(("127.0.0.1", http.effective_port), timeout=5)
    s.sendall(b"GET /wait HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    time.sleep(0.3)
    assert not gone.is_set()
    s.close()
    assert gone.wait(30)


def test_a_client_that_pipelines_requests_and_leaves_unread_harms_nobody(served):
    """Hostile: 200 requests sent in one go, nothing read, the connection reset; and half a
    request left hanging. The server answers others and lets go of both connections."""
    http, _, _ = served
    port = http.effective_port
    rude = socket.create_connection(("127.0.0.1", port))
    rude.sendall(b"GET /hit HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 200)
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /hit HTTP/1.1\r\nHost: 127.0")
    rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    rude.close()  # a reset, with answers unsent
    assert ask(port, "/hit").endswith(b'{"cached":true}\n')
    half.close()
    wait_for(lambda: len(http._map) == 2, interval=0.05)  # the listener, the trigger: both gone
    assert ask(port, "/hit").endswith(b'{"cached":true}\n')
