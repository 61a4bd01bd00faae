"""The hit lane (mistryd/web/lane.py): a cached `POST /jobs` answered by waitress's I/O thread
itself, exactly as the full way (a request thread and Flask) answers it; everything else, and
every hit it cannot tell cheaply, goes the full way."""

from __future__ import annotations

import json
import socket

import pytest
from flask import request_started
from support import ADMIN, BUILD, READ, TOKENS

import mistryd.store
from mistryd.jobs import JobRequest

HELLO = json.dumps({"project": "hello"}).encode()


@pytest.fixture
def full_way():
    """The paths of the requests Flask handled (the full way), in order."""
    seen: list[str] = []

    def started(sender, **extra) -> None:
        from flask import request

        seen.append(request.full_path.rstrip("?"))

    request_started.connect(started)
    yield seen
    request_started.disconnect(started)


def post(path: str = "/jobs", body: bytes = HELLO, headers: dict[str, str] | None = None,
         version: str = "1.1") -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", **(headers or {})}.items())
    return (f"POST {path} HTTP/{version}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
            + body)


def exchange(srv, *requests: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Send the requests on one connection in one write (pipelined); their answers in order:
    (status line, headers, body)."""
    with socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])), timeout=30) as s:
        s.sendall(b"".join(requests))
        data, answers = b"", []
        while len(answers) < len(requests):
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                assert chunk, f"the server closed the connection after {len(answers)} answers"
                data += chunk
            head, data = data.split(b"\r\n\r\n", 1)
            status, *lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines)
            length = int(headers["Content-Length"])
            while len(data) < length:
                data += s.recv(65536)
            answers.append((status, headers, data[:length]))
            data = data[length:]
    return answers


def warm(srv) -> dict:
    """Build hello and hit it once the full way (which keeps the answer in memory)."""
    info = srv.build("hello")
    assert srv.build("hello")["Cached"] is True
    return info


def test_a_hit_is_answered_by_the_io_thread_exactly_as_the_full_way_answers_it(start_server,
                                                                             full_way):
    srv = start_server()
    warm(srv)
    full_way.clear()
    (lane_status, lane_headers, lane_body), (status, headers, body) = exchange(
        srv, post(), post("/jobs?the-full-way"))
    assert full_way == ["/jobs?the-full-way"]  # the first never reached Flask
    assert lane_status == status == "HTTP/1.1 201 CREATED"
    lane_headers.pop("Date"), headers.pop("Date")
    assert list(lane_headers.items()) == list(headers.items())  # the same names, order, values
    assert lane_body == body
    assert json.loads(lane_body)["Cached"] is True
    metrics = srv.server.metrics.cache_hits.value("hello")
    assert metrics == 3  # the lane's hit counts as a hit, as the full way's do


def test_pipelined_requests_are_answered_in_order_whoever_answers_them(start_server, full_way):
    srv = start_server()
    info = warm(srv)
    full_way.clear()
    answers = exchange(srv, post(), post(body=b"{not json"), post(), post(), post("/jobs?again"),
                       post())
    assert [a[0].split()[1] for a in answers] == ["201", "400", "201", "201", "201", "201"]
    assert "not valid JSON" in json.loads(answers[1][2])["error"]
    assert all(json.loads(a[2])["ID"] == info["ID"] for i, a in enumerate(answers) if i != 1)
    assert full_way == ["/jobs", "/jobs?again"]  # the bad body, and the one with a query


def test_what_the_lane_leaves_to_the_full_way(start_server, full_way):
    srv = start_server()
    warm(srv)
    full_way.clear()
    asks = [
        ("a browser's write from another site", post(headers={"Origin": "http://evil.example"}),
         "403"),
        ("a host this server does not answer to", post(headers={"Host": "evil.example"}), "421"),
        ("another project", post(body=b'{"project": "nope"}'), "404"),
        ("a bad field", post(body=b'{"project": "hello", "colour": "red"}'), "400"),
        ("a large body", post(body=b'{"project": "hello"}' + b" " * (64 << 10)), "201"),
        ("HTTP/1.0", post(version="1.0"), "201"),
        ("a connection to close", post(headers={"Connection": "close"}), "201"),
    ]
    for why, raw, status in asks:
        (answer_status, _, body), = exchange(srv, raw)
        assert answer_status.split()[1] == status, (why, body)
    assert len(full_way) == len(asks)  # none of them was answered by the lane


def test_with_tokens_only_a_build_token_for_the_group_is_answered_by_the_lane(start_server,
                                                                            full_way):
    limited = "limited-token-0123456789"
    srv = start_server(tokens=[*TOKENS, {"name": "ci-a", "token": limited, "role": "build",
                                         "groups": ["a-*"]}])
    for _ in range(2):  # built, then hit once the full way: kept in memory
        assert srv.post_job({"project": "hello"}, headers={"Authorization": f"Bearer {BUILD}"}
                            ).status_code == 201
    full_way.clear()
    lane = exchange(srv, post(headers={"Authorization": f"Bearer {BUILD}"}),
                    post(headers={"Authorization": f"Bearer {ADMIN}"}))
    assert [a[0].split()[1] for a in lane] == ["201", "201"] and full_way == []
    refused = exchange(
        srv, post(), post(headers={"Authorization": f"Bearer {READ}"}),
        post(headers={"Authorization": "Bearer wrong-token-0123456789"}),
        post(headers={"Authorization": f"Bearer {limited}"}),
        post(headers={"Cookie": f"mistryd_token={BUILD}"}))  # a cookie write needs its Origin
    assert [a[0].split()[1] for a in refused] == ["401", "403", "401", "403", "403"]
    assert len(full_way) == 5


def test_a_changed_project_is_told_the_full_way(start_server):
    srv = start_server()
    warm(srv)
    request = JobRequest("hello")
    assert srv.server.quick_hit(request) is not None
    dockerfile = srv.projects_path / "hello" / "Dockerfile"
    original = dockerfile.read_text()
    dockerfile.write_text(original + "\n# changed\n")
    # the new content is not hashed yet: only the full way reads files
    assert srv.server.quick_hit(request) is None
    dockerfile.write_text(original)
    assert srv.server.quick_hit(request) is None  # written again: hashed again first
    srv.server.key_of(request)  # as the full way does
    assert srv.server.quick_hit(request) is not None


def test_lane_hits_count_as_use_and_the_full_way_writes_them(start_server, monkeypatch):
    srv = start_server()
    info = warm(srv)
    store = srv.server.store
    store.flush_usage()
    before = store.get("hello", info["ID"]).last_used
    assert srv.server.quick_hit(JobRequest("hello")) is not None  # counted, kept in memory
    monkeypatch.setattr(mistryd.store, "USAGE_FLUSH_SECONDS", 0.0)  # a write is due now
    assert srv.server.quick_hit(JobRequest("hello")) is None  # so the full way answers
    srv.build("hello")  # ... and writes the uses gathered
    assert store.get("hello", info["ID"]).last_used > before


def test_the_lane_answers_with_the_answer_kept_in_memory_only(start_server, full_way):
    """The first hit of a build after a restart reads build_info.json and the log: the full way
    does that, not the I/O thread."""
    srv = start_server()
    info = srv.build("hello")
    srv.stop()
    again = start_server(build_path=srv.build_path, projects_path=srv.projects_path)
    full_way.clear()
    answers = exchange(again, post(), post())
    assert [a[0].split()[1] for a in answers] == ["201", "201"]
    assert full_way == ["/jobs"]  # the first loaded it; the second was the lane's
    assert [json.loads(a[2])["ID"] for a in answers] == [info["ID"]] * 2
