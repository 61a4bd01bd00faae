"""`--timeout` is a deadline for the whole command, counted from its start: a build that keeps
printing does not push it back, and neither does a server that never answers (issue #10)."""

from __future__ import annotations

import socket

import pytest
from client_helpers import await_log_line, one_line, port_of, run_mistry

from mistry_client import BuildTimeout, Client


def test_a_build_that_keeps_printing_does_not_push_the_deadline_back(start_server):
    server = start_server(projects=("client-chatty",))
    port = port_of(server.url)
    client = Client("127.0.0.1", port)
    job = client.submit("client-chatty")  # prints a line every 0.2 s for 60 s
    await_log_line(server.url, "client-chatty", job.id, "line 0")

    # joins the running build and follows its log, which never goes quiet for long
    r = run_mistry(["build", "--project", "client-chatty", "--timeout", "3s", "-v"], port=port)
    assert r.returncode == 5, r.stderr
    assert one_line(r) == "The build did not finish after 3s"
    assert "line 1\n" in r.stdout  # the log did stream until then
    view = client.job("client-chatty", job.id)
    assert (view["State"], view["Status"]) == ("pending", "running")  # ended before the build

    # the Python API keeps the same deadline
    with pytest.raises(BuildTimeout):
        client.wait("client-chatty", job.id, timeout=1)
    assert client.job("client-chatty", job.id)["Status"] == "running"

    client.cancel("client-chatty", job.id)
    info = client.wait("client-chatty", job.id, timeout=120)
    assert info["Status"] == "cancelled"
    assert "\nline 0\nline 1\n" in info["ContainerStdouterr"]  # the log, as the client followed it


def test_the_deadline_counts_from_the_start_even_when_the_server_never_answers():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, reads, never answers
        port = silent.getsockname()[1]
        r = run_mistry(["build", "--project", "hello", "--timeout", "1s"], port=port)
        assert r.returncode == 5, r.stderr
        assert one_line(r) == "The build did not finish after 1s"
        with pytest.raises(BuildTimeout):
            Client("127.0.0.1", port).build("hello", timeout=0.5)
