"""Every way of not getting an answer ends `mistry` with one line and its exit code, never a
traceback: host forms, no server, another service on the port, server errors, broken answers."""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading

import pytest
from client_helpers import free_port, one_line, port_of, run_mistry


def test_host_may_carry_the_port_and_the_scheme(mistry, tmp_path):
    port = port_of(mistry.server().url)
    dead = free_port()  # MISTRY_PORT: a port in --host wins over it
    for i, host in enumerate((f"127.0.0.1:{port}", f"http://127.0.0.1:{port}",
                              f"HTTP://127.0.0.1:{port}/")):
        r = run_mistry(["build", "--project", "hello", "--host", host, "-t", str(tmp_path / str(i))],
                       port=dead)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"Logs can be found at http://127.0.0.1:{port}/job/hello/")
        assert (tmp_path / str(i) / "out.txt").read_text() == "hello\n"
    r = run_mistry(["status", "--host", f"127.0.0.1:{port}", "hello", "0" * 64], port=dead)
    assert (r.returncode, one_line(r)) == (3, f"(error: 404) no build hello/{'0' * 64}")


@pytest.mark.parametrize("host, problem", [
    ("ftp://myserver", "'ftp://myserver' has the scheme 'ftp'; mistryd speaks http:// or https://"),
    ("myserver:abc", "'myserver:abc' has a bad port; a port is a number from 1 to 65535, as in "
                     "myserver:8462"),
    ("myserver:0", "'myserver:0' has a bad port; a port is a number from 1 to 65535, as in "
                   "myserver:8462"),
    ("http://myserver/mistry", "'http://myserver/mistry' has a path after the host; use a host "
     "(myserver), host:port (myserver:8462) or a URL (http://myserver:8462)"),
    ("me@myserver", "'me@myserver' has a user name in it; give a token with --token instead"),
])
def test_a_host_that_is_no_address_is_a_usage_error(host, problem):
    r = run_mistry(["build", "--project", "hello", "--host", host])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == f"Error: Invalid value for '--host': {problem}"


def test_no_server_on_that_port():
    port = free_port()
    r = run_mistry(["build", "--project", "hello"], port=port)
    assert r.returncode == 4
    assert one_line(r) == \
        f"cannot reach mistryd at http://127.0.0.1:{port}: connection refused (check --host and --port)"


def test_a_host_name_that_does_not_resolve():
    r = run_mistry(["status", "--host", "no-such-host.invalid", "hello", "0" * 64])
    assert r.returncode == 4
    assert one_line(r) == ("cannot reach mistryd at http://no-such-host.invalid:8462: the host name "
                           "does not resolve (check --host and --port)")


@contextlib.contextmanager
def _web_server(folder):
    """Another HTTP service: Python's file server, which answers in HTML."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def test_another_web_service_on_that_port(tmp_path):
    (tmp_path / "job" / "hello").mkdir(parents=True)
    (tmp_path / "job" / "hello" / "x").write_text("<html><body>not mistryd</body></html>")
    with _web_server(tmp_path) as port:
        base = f"http://127.0.0.1:{port}"
        r = run_mistry(["build", "--project", "hello"], port=port)
        assert r.returncode == 4
        assert one_line(r) == (f"no mistryd at {base}: POST /jobs?async got \"501 Unsupported "
                               "method ('POST')\" (text/html) instead of mistryd's JSON error "
                               "(check --host and --port)")
        r = run_mistry(["logs", "-f", "hello", "0" * 64], port=port)
        assert r.returncode == 4
        assert one_line(r) == (f"no mistryd at {base}: GET /log/hello/{'0' * 64} got \"404 File "
                               "not found\" (text/html) instead of mistryd's JSON error "
                               "(check --host and --port)")
        r = run_mistry(["status", "--host", f"{base}/", "hello", "x"], port=1)
        assert r.returncode == 4, r.stderr  # a 200, and no JSON in it either
        assert one_line(r) == (f"no mistryd at {base}: GET /job/hello/x got \"200 OK\" "
                               "(application/octet-stream) instead of mistryd's JSON "
                               "(check --host and --port)")


def test_a_service_that_does_not_speak_http():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def banner():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
                conn.recv(65536)

        threading.Thread(target=banner, daemon=True).start()
        port = listener.getsockname()[1]
        r = run_mistry(["build", "--project", "hello"], port=port)
    assert r.returncode == 4
    assert one_line(r) == \
        f"no mistryd at http://127.0.0.1:{port}: the answer is not HTTP (check --host and --port)"


def test_server_errors_are_one_line_with_the_servers_words(mistry):
    r = mistry("build", "--project", "hello", "--group", "../escape")
    assert r.returncode == 3
    line = one_line(r)
    assert line.startswith("(error: 400) ") and "group" in line, line
    r = mistry("cancel", "hello", "0" * 64)
    assert (r.returncode, one_line(r)) == (3, f"(error: 404) no build hello/{'0' * 64}")


def test_an_answer_cut_short(mistry, cutting_proxy):
    proxy = cutting_proxy(port_of(mistry.server().url), cut_after=100, cuts=1)
    r = run_mistry(["build", "--project", "hello"], port=proxy.port)
    assert proxy.cuts_done == 1
    assert r.returncode == 4
    assert one_line(r) == (f"the connection to mistryd at http://127.0.0.1:{proxy.port} broke "
                           "before the answer was complete")


def test_a_target_that_cannot_be_written(mistry, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the target folder should go")
    r = mistry("build", "--project", "hello", "-t", str(blocker / "out"))
    assert r.returncode == 6
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == \
        f"the artifacts could not be written to {blocker / 'out'}: Not a directory ({blocker / 'out'})"
