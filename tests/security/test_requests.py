"""Requests are hostile until validated: writes from other sites' pages, foreign Host names (DNS
rebinding), bodies over the limit, open redirects after login, inputs that used to be a 500, and
the security headers on every answer. Against the real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile

import pytest
import requests

ADMIN = "admin-token-0123456789"
EVIL = "http://evil.example"
JOB = '{"project": "hello"}'


def port_of(srv) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def nothing_built(srv) -> bool:
    index = requests.get(f"{srv.url}/index/", timeout=10)
    return index.json() == [] and not (srv.build_path / "hello").exists()


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send `request` as is and read the answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def json_body(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


# --- writes from other origins (item 12) ------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
])
def test_a_form_posted_from_another_site_starts_no_build(start_server, headers):
    srv = start_server()
    r = requests.post(f"{srv.url}/jobs?async", data=JOB, timeout=10,
                      headers={"Content-Type": "text/plain", **headers})
    assert r.status_code == 403, r.text
    assert "another site's page" in r.json()["error"]
    assert nothing_built(srv)


def test_scripts_without_origin_and_the_servers_own_pages_may_write(start_server):
    srv = start_server()
    # curl -d sends x-www-form-urlencoded and no Origin: it keeps working
    r = requests.post(f"{srv.url}/jobs?async", data=JOB, timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 201, r.text
    cancel = requests.post(f"{srv.url}/jobs/hello/{r.json()['id']}/cancel", timeout=30,
                           headers={"Origin": srv.url, "Sec-Fetch-Site": "same-origin"})
    assert cancel.status_code in (200, 409), cancel.text  # the view ran: cancelled, or done


def test_a_cancel_from_another_site_is_refused(start_server):
    srv = start_server()
    r = requests.post(f"{srv.url}/jobs?async", data=JOB, timeout=10)
    assert r.status_code == 201, r.text
    url = f"{srv.url}/jobs/hello/{r.json()['id']}"
    for method, path in (("POST", "/cancel"), ("DELETE", "")):
        refused = requests.request(method, url + path, timeout=10,
                                   headers={"Sec-Fetch-Site": "cross-site"})
        assert refused.status_code == 403, refused.text
    job = requests.get(f"{srv.url}/job/hello/{r.json()['id']}", timeout=10,
                       headers={"Accept": "application/json"})
    assert job.json()["Status"] != "cancelled", job.text


# --- Host names (item 12, DNS rebinding) ------------------------------------------------------


def test_a_foreign_host_name_is_refused(start_server):
    srv = start_server()
    for path in ("/index/", "/", "/jobs"):
        r = requests.get(f"{srv.url}{path}", headers={"Host": "evil.example"}, timeout=10)
        assert r.status_code == 421, r.text
        assert "allowed_hosts" in r.json()["error"] and "evil.example" in r.json()["error"]
    r = requests.post(f"{srv.url}/jobs", data=JOB, headers={"Host": f"evil.example:{port_of(srv)}"},
                      timeout=10)
    assert r.status_code == 421 and nothing_built(srv)
    bad = requests.get(f"{srv.url}/index/", headers={"Host": "a b"}, timeout=10)
    assert bad.status_code == 400 and "Host" in bad.json()["error"]
    for ok in (f"127.0.0.1:{port_of(srv)}", f"localhost:{port_of(srv)}", "127.0.0.1"):
        assert requests.get(f"{srv.url}/index/", headers={"Host": ok}, timeout=10).ok


def test_allowed_hosts_names_what_a_proxy_forwards(start_server):
    srv = start_server(allowed_hosts=["builds.example.org", "proxy.lan:8080"])
    for host in ("builds.example.org", "Builds.Example.org:443", "proxy.lan:8080"):
        assert requests.get(f"{srv.url}/index/", headers={"Host": host}, timeout=10).ok, host
    for host in ("proxy.lan", "evil.example"):
        r = requests.get(f"{srv.url}/index/", headers={"Host": host}, timeout=10)
        assert r.status_code == 421, host


# --- bodies over the limit (item 13) ----------------------------------------------------------


def big_temp_files(limit: int) -> list[str]:
    """Temporary files over `limit` bytes this process (the server's) holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            info = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir()) and stat.S_ISREG(info.st_mode) \
                and info.st_size > limit:
            found.append(target)
    return found


def test_a_huge_content_length_is_refused_before_the_body_is_sent(start_server):
    srv = start_server()
    answer = raw_exchange(port_of(srv), (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port_of(srv)}\r\nContent-Type: application/json"
        f"\r\nContent-Length: {1 << 30}\r\n\r\n{JOB[:10]}").encode())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]  # with 10 of 2**30 bytes sent
    assert b"Content-Type: application/json" in answer
    assert b"X-Content-Type-Options: nosniff" in answer
    assert "max_body_bytes" in json_body(answer)["error"]
    assert big_temp_files(1 << 20) == []
    assert nothing_built(srv)


def test_the_limit_is_max_body_bytes_exactly(start_server):
    srv = start_server(max_body_bytes=1000)
    unknown = '{"project": "nope"}'
    at_limit = requests.post(f"{srv.url}/jobs", data=unknown.ljust(1000), timeout=10)
    assert at_limit.status_code == 404, at_limit.text  # it reached the API
    over = requests.post(f"{srv.url}/jobs", data=unknown.ljust(1001), timeout=10)
    assert over.status_code == 413 and "1000 bytes" in over.json()["error"]
    chunk = unknown.ljust(1500).encode()
    chunked = raw_exchange(port_of(srv), (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(chunk):x}\r\n").encode() + chunk + b"\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    assert "error" in json_body(chunked)


# --- small ones (item 15) ---------------------------------------------------------------------


@pytest.mark.parametrize("bad_next", ["/\t/evil.example", "//evil", "/\\evil", "https://evil",
                                      "/\n/evil.example", "\\/evil.example"])
def test_login_never_redirects_to_another_site(start_server, bad_next):
    srv = start_server(tokens=[{"name": "ops", "token": ADMIN, "role": "admin"}])
    r = requests.post(f"{srv.url}/login", data={"token": ADMIN, "next": bad_next},
                      allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["Location"] == "/", r.headers.get("Location")
    page = requests.get(f"{srv.url}/login", params={"next": bad_next}, timeout=10)
    assert 'name="next" value="/"' in page.text
    good = requests.post(f"{srv.url}/login", data={"token": ADMIN, "next": "/builds?page=2"},
                         allow_redirects=False, timeout=10)
    assert good.headers["Location"] == "/builds?page=2"


@pytest.mark.parametrize("body", ["[" * 100_000, '{"a":' * 100_000, "[" * 100_000 + "]" * 100_000])
def test_deeply_nested_json_is_400(start_server, body):
    srv = start_server(max_body_bytes=1 << 20)
    r = srv.post_job(body)
    assert r.status_code == 400, r.text
    assert "nests too deeply" in r.json()["error"]


def test_a_limit_that_is_no_small_number_is_400(start_server):
    srv = start_server()
    for limit in ("99999999999999999999", "abc", "1e3", "--1"):
        r = requests.get(f"{srv.url}/index/", params={"limit": limit}, timeout=10)
        assert r.status_code == 400, (limit, r.text)
        assert "limit" in r.json()["error"]
    for limit in ("1", "-1", "999999999999999999", ""):
        r = requests.get(f"{srv.url}/index/", params={"limit": limit}, timeout=10)
        assert r.status_code == 200 and r.json() == [], (limit, r.text)


def test_every_answer_has_the_security_headers(start_server):
    srv = start_server()
    html = {"Accept": "text/html"}
    answers = [
        requests.get(f"{srv.url}/", headers=html, timeout=10),
        requests.get(f"{srv.url}/builds", headers=html, timeout=10),
        requests.get(f"{srv.url}/login", timeout=10),
        requests.get(f"{srv.url}/index/", timeout=10),
        requests.get(f"{srv.url}/static/mistryd.js", timeout=10),
        requests.get(f"{srv.url}/nothing-here", headers=html, timeout=10),
        requests.get(f"{srv.url}/healthz", timeout=10),
        requests.post(f"{srv.url}/jobs", data="{", timeout=10),
        requests.get(f"{srv.url}/index/", headers={"Host": "evil.example"}, timeout=10),
    ]
    for r in answers:
        where = f"{r.request.method} {r.url} -> {r.status_code}"
        assert r.headers.get("X-Content-Type-Options") == "nosniff", where
        assert r.headers.get("X-Frame-Options") == "DENY", where
        assert r.headers.get("Referrer-Policy") == "same-origin", where
        csp = r.headers.get("Content-Security-Policy", "")
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, where
        assert "unsafe-inline" not in csp, where
