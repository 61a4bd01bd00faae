"""The log stream: `mistry logs -f` resumes after a dropped connection without losing or
repeating a line (Last-Event-ID); waiting for a build ends with the stream's `end` event."""

from __future__ import annotations

import json
import os
import subprocess

import requests
from client_helpers import MISTRY, RecordingProxy, end_event, port_of, run_mistry


def test_follow_resumes_after_dropped_connections(start_server, cutting_proxy):
    server = start_server(projects=("client-params",))
    params = {f"p{i:03d}": "x" * 40 for i in range(300)}  # a log of some length
    info = server.build("client-params", params=params)
    log = (server.build_path / "client-params" / "ready" / info["ID"] / "out.log").read_text()
    assert len(log) > 3000, log
    proxy = cutting_proxy(port_of(server.url), cut_after=700, cuts=3)
    r = run_mistry(["logs", "-f", "client-params", info["ID"]], port=proxy.port)
    assert r.returncode == 0, r.stderr
    assert proxy.cuts_done == 3 and proxy.connections >= 4
    assert r.stdout == log


def test_waiting_ends_with_the_logs_end_and_asks_for_the_record_at_most_once(start_server,
                                                                             tmp_path):
    server = start_server(projects=("hello",))
    proxy = RecordingProxy(port_of(server.url))
    try:
        r = run_mistry(["build", "--project", "hello", "--json-result", "-t", str(tmp_path / "o")],
                       port=proxy.port)
        asked = proxy.request_lines()
    finally:
        proxy.close()
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    build_id = info["ID"]
    assert asked[:2] == ["POST /jobs?async", f"GET /log/hello/{build_id}"]
    record_asked = [line for line in asked if line.startswith("GET /job/")]
    if end_event(server.url, "hello", build_id).get("info"):
        assert record_asked == []  # the end event carried the record
    else:  # an older server: one look at the record, no polling
        assert record_asked == [f"GET /job/hello/{build_id}"]
    # the same BuildInfo as the server's record, with the log the client followed
    record = requests.get(f"{server.url}/job/hello/{build_id}", timeout=30,
                          headers={"Accept": "application/json"}).json()["BuildInfo"]
    assert info == record
    assert "hello from the build\n" in info["ContainerStdouterr"]


def test_a_reader_that_stops_early_ends_the_command_quietly(start_server):
    """`mistry logs ... | head -1` on a log far larger than a pipe holds: no traceback when the
    pipe closes, and the exit status of a command stopped by SIGPIPE."""
    server = start_server(projects=("web-longlog",))
    info = server.build("web-longlog")
    env = {**os.environ, "MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": str(port_of(server.url))}
    pipe = subprocess.run(f"'{MISTRY}' logs -f web-longlog {info['ID']} | head -1; "
                          "echo \"status ${PIPESTATUS[0]}\" >&2", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120, env=env)
    assert len(pipe.stdout.splitlines()) == 1
    assert pipe.stderr == "status 141\n", pipe.stderr
