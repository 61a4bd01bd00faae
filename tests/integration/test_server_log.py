"""The server's own log, as an operator reads it: one line when a build starts and one when it
ends (project, id, outcome, duration), whether access control is on at start-up, and no noise for
clients that hang up."""

import json
import re
import socket

import pytest
import requests
from support import BUILD, TOKENS, bearer, make_setup, shut

from mistryd.docker_runner import remove_instance_images

pytestmark = pytest.mark.docker


def stopped_log(setup, proc) -> str:
    proc.terminate()
    proc.wait(30)
    return (setup.config.parent / "mistryd.log").read_text()


def hang_up(port: int, request: str, wait_for: bytes) -> None:
    """Send `request`, read until `wait_for` arrives (the answer has begun), then reset the
    connection as a closed browser tab or a killed client does."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(request.encode())
    seen = b""
    while wait_for not in seen:
        chunk = s.recv(65536)
        assert chunk, seen
        seen += chunk
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    shut(s)


def test_builds_start_and_end_in_the_log_and_hang_ups_leave_no_noise(docker_engine, tmp_path):
    setup = make_setup(tmp_path, ("hello", "failing", "sleeper"))
    proc = setup.start()
    try:
        ok = requests.post(f"{setup.url}/jobs", json={"project": "hello", "group": "g"},
                           timeout=300).json()
        failed = requests.post(f"{setup.url}/jobs", json={"project": "failing"}, timeout=300).json()
        assert (ok["Status"], failed["Status"]) == ("succeeded", "failed")
        slow = requests.post(f"{setup.url}/jobs?async", timeout=30,
                             json={"project": "sleeper", "params": {"sleep": "3"}}).json()
        # a log follower and a sync waiter that hang up while the build runs
        hang_up(setup.port, f"GET /log/sleeper/{slow['id']} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            "Accept: text/event-stream\r\n\r\n", b"sleeping 3")
        body = json.dumps({"project": "sleeper", "params": {"sleep": "3"}})
        s = socket.create_connection(("127.0.0.1", setup.port))
        s.sendall(f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        shut(s)
        # an artifact download cut after its first bytes
        hang_up(setup.port, f"GET /artifacts/hello/{ok['ID']}.tar HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                b"\r\n\r\n")
        joined = requests.post(f"{setup.url}/jobs", timeout=300,  # waits for the same build
                               json={"project": "sleeper", "params": {"sleep": "3"}}).json()
        assert (joined["ID"], joined["Status"]) == (slow["id"], "succeeded"), joined
    finally:
        log = stopped_log(setup, proc)
        remove_instance_images(setup.builds)

    assert "access control off: no tokens in the config" in log, log
    assert re.search(rf"INFO mistryd: build hello/{ok['ID']} started \(group g\)", log), log
    assert re.search(rf"INFO mistryd: build hello/{ok['ID']} succeeded after \d+\.\ds\n", log), log
    assert re.search(rf"INFO mistryd: build failing/{failed['ID']} failed after \d+\.\ds "
                     r"\(exit code 77\)", log), log
    assert re.search(rf"mistryd: build sleeper/{slow['id']} succeeded after [3-9]\.\ds", log), log
    assert log.count(" started (group ") == log.count(" after ") == 3, log
    assert "Client disconnected" not in log and "Socket error" not in log, log
    assert "Traceback" not in log, log


def test_the_start_up_line_says_access_control_is_on_and_names_no_secret(docker_engine, tmp_path):
    setup = make_setup(tmp_path, ("hello",), tokens=TOKENS)
    proc = setup.start()
    assert requests.get(f"{setup.url}/index/", headers=bearer(BUILD), timeout=10).ok
    log = stopped_log(setup, proc)
    assert ("access control on: 3 token(s): viewer (read), ci (build), ops (admin); requests "
            "without a token are refused") in log, log
    assert all(t["token"] not in log for t in TOKENS), log
