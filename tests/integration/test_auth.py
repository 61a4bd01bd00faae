"""Access control: tokens with roles, anonymous read, the browser's cookie login, the `mistry`
client's --token / MISTRY_TOKEN, and upstream's open server when no tokens are configured."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import ADMIN, BUILD, READ, TOKENS, bearer

from mistryd.config import Token
from mistryd.web.auth import listens_beyond_loopback, match_token, required_role

MISTRY = Path(sys.executable).parent / "mistry"
MISTRYD = Path(sys.executable).parent / "mistryd"

JSON = {"Accept": "application/json"}


@pytest.fixture
def secured(start_server):
    return start_server(tokens=TOKENS)


@pytest.fixture
def log_records():
    """Every log record of the process at DEBUG, whoever logs it (waitress, flask, mistryd)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler, level = Keep(logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield records
    root.removeHandler(handler)
    root.setLevel(level)


# --- the rules, without a server ----------------------------------------------------------------


def test_every_method_and_rule_maps_to_a_role():
    assert required_role("GET", "/") == "read"
    assert required_role("GET", "/job/<project>/<build_id>") == "read"
    assert required_role("HEAD", "/artifacts/<project>/<build_id>.tar") == "read"
    assert required_role("GET", "/metrics") == "read"
    assert required_role("GET", None) == "read"  # no rule matched: anonymous callers learn nothing
    assert required_role("POST", "/jobs") == "build"
    assert required_role("POST", "/jobs/<project>/<build_id>/cancel") == "admin"
    assert required_role("DELETE", "/jobs/<project>/<build_id>") == "admin"
    assert required_role("PUT", "/anything/new") == "admin"  # unknown writes fail closed
    assert required_role("POST", None) == "admin"
    for public in ("/login", "/logout", "/openapi.yaml", "/healthz", "/static/<path:filename>"):
        assert required_role("GET", public) is None


def test_token_match_and_the_loopback_check():
    tokens = tuple(Token(t["name"], t["token"], t["role"]) for t in TOKENS)
    assert match_token(BUILD, tokens).name == "ci"
    assert match_token(BUILD[:-1], tokens) is None
    assert match_token(BUILD + "x", tokens) is None
    assert match_token("", tokens) is None
    assert match_token("ünïcode-\udcff", tokens) is None  # odd bytes are a miss, not a crash
    assert BUILD not in repr(tokens)
    assert not listens_beyond_loopback("127.0.0.1")
    assert not listens_beyond_loopback("::1")
    assert not listens_beyond_loopback("localhost")
    assert listens_beyond_loopback("0.0.0.0")
    assert listens_beyond_loopback("::")
    assert listens_beyond_loopback("192.0.2.7")
    assert listens_beyond_loopback("build.example")


# --- roles over HTTP -----------------------------------------------------------------------------


def test_build_needs_the_build_role(secured):
    body = {"project": "hello"}
    none = secured.post_job(body)
    assert none.status_code == 401
    assert none.headers["WWW-Authenticate"].startswith("Bearer")
    assert "needs a token" in none.json()["error"]
    assert none.json()["error"].endswith("(mistry: --token or MISTRY_TOKEN; browsers: /login)")
    unknown = secured.post_job(body, headers=bearer("not-a-token-of-this-server"))
    assert unknown.status_code == 401 and "unknown token" in unknown.json()["error"]
    assert unknown.headers["WWW-Authenticate"].startswith("Bearer")
    malformed = secured.post_job(body, headers={"Authorization": f"Basic {BUILD}"})
    assert malformed.status_code == 401 and "Bearer <token>" in malformed.json()["error"]
    reader = secured.post_job(body, headers=bearer(READ))
    assert reader.status_code == 403
    assert reader.json()["error"] == ("token 'viewer' has role 'read' but POST /jobs needs "
                                      "'build'; use a token with role 'build' or higher")
    assert "WWW-Authenticate" not in reader.headers
    assert secured.post_job(body, headers=bearer(BUILD)).status_code == 201
    again = secured.post_job(body, headers=bearer(ADMIN))  # admin > build
    assert again.status_code == 201 and again.json()["Cached"] is True


def test_read_token_reads_job_log_artifacts_index_and_metrics(secured):
    info = secured.post_job({"project": "hello"}, headers=bearer(BUILD)).json()
    assert info["ExitCode"] == 0
    job = f"hello/{info['ID']}"
    reads = {
        f"/job/{job}": "application/json",
        f"/log/{job}": "text/event-stream",
        f"/artifacts/{job}/": "application/json",
        f"/artifacts/{job}/out.txt": "application/octet-stream",
        f"/artifacts/{job}.tar": "application/x-tar",
        f"/job/{job}/out.log": "text/plain",
        "/index/": "application/json",
        "/metrics": "text/plain",
    }
    for path, content_type in reads.items():
        refused = requests.get(secured.url + path, headers=JSON, timeout=30)
        assert refused.status_code == 401, path
        r = requests.get(secured.url + path, headers={**JSON, **bearer(READ)}, timeout=30)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["Content-Type"].startswith(content_type), path
    artifact = requests.get(f"{secured.url}/artifacts/{job}/out.txt", headers=bearer(READ),
                            timeout=30)
    assert artifact.content == b"hello\n"
    assert "event: end" in requests.get(f"{secured.url}/log/{job}", headers=bearer(READ),
                                        timeout=30).text
    # reading is all a read token does; cancelling takes admin (and a finished build is a 409)
    for method, path in (("POST", f"/jobs/{job}/cancel"), ("DELETE", f"/jobs/{job}")):
        for token in (READ, BUILD):
            r = requests.request(method, secured.url + path, headers=bearer(token), timeout=30)
            assert r.status_code == 403, (method, path, token)
            assert "needs 'admin'" in r.json()["error"]
        r = requests.request(method, secured.url + path, headers=bearer(ADMIN), timeout=30)
        assert r.status_code == 409, (method, path, r.text)


def test_public_endpoints_need_no_token(secured):
    assert requests.get(f"{secured.url}/openapi.yaml", timeout=10).text.startswith("openapi: 3")
    assert requests.get(f"{secured.url}/login", timeout=10).status_code == 200
    assert requests.get(f"{secured.url}/static/mistryd.css", timeout=10).status_code == 200
    # an unknown URL is not a way to probe the server without a token
    assert requests.get(f"{secured.url}/no/such/page", timeout=10).status_code == 401
    assert requests.get(f"{secured.url}/no/such/page", headers=bearer(READ),
                        timeout=10).status_code == 404


def test_anonymous_read(start_server):
    srv = start_server(tokens=TOKENS, anonymous_read=True)
    assert requests.get(f"{srv.url}/index/", timeout=10).status_code == 200
    assert requests.get(f"{srv.url}/", timeout=10).status_code == 200
    refused = srv.post_job({"project": "hello"})
    assert refused.status_code == 401 and "role 'build'" in refused.json()["error"]
    # a wrong token is still a mistake worth saying, even where none is needed
    assert requests.get(f"{srv.url}/index/", headers=bearer("wrong-token-0123456789"),
                        timeout=10).status_code == 401
    info = srv.post_job({"project": "hello"}, headers=bearer(BUILD)).json()
    assert requests.get(f"{srv.url}/artifacts/hello/{info['ID']}/out.txt",
                        timeout=10).content == b"hello\n"


def test_no_tokens_is_open_as_upstream(start_server):
    srv = start_server()
    info = srv.build("hello")
    assert info["ExitCode"] == 0
    assert requests.get(f"{srv.url}/index/", timeout=10).status_code == 200
    assert requests.get(f"{srv.url}/artifacts/hello/{info['ID']}/out.txt",
                        timeout=10).content == b"hello\n"
    assert requests.get(f"{srv.url}/", headers={"Accept": "text/html"},
                        timeout=10).status_code == 200
    # a token sent anyway is not an error
    assert requests.get(f"{srv.url}/index/", headers=bearer("anything-0123456789"),
                        timeout=10).status_code == 200
    assert "no login is needed" in requests.get(f"{srv.url}/login", timeout=10).text


def test_tokens_are_never_logged(secured, log_records):
    for token in (READ, BUILD, ADMIN, "not-a-token-of-this-server"):
        requests.get(f"{secured.url}/index/", headers=bearer(token), timeout=10)
        secured.post_job({"project": "hello"}, headers=bearer(token))
        requests.post(f"{secured.url}/login", data={"token": token}, allow_redirects=False,
                      timeout=10)
    text = "\n".join(r.getMessage() + repr(r.args) for r in log_records)
    for token in (READ, BUILD, ADMIN, "not-a-token-of-this-server"):
        assert token not in text
    assert secured.server.config.tokens and BUILD not in repr(secured.server.config)


# --- the browser: cookie login -------------------------------------------------------------------


def test_cookie_login_for_pages_and_the_live_log(secured):
    info = secured.post_job({"project": "hello"}, headers=bearer(BUILD)).json()
    page = f"/job/hello/{info['ID']}"
    browser = requests.Session()
    browser.headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
    to_login = browser.get(secured.url + page, allow_redirects=False, timeout=10)
    assert to_login.status_code == 302
    assert to_login.headers["Location"] == f"/login?next={page}"
    with_query = browser.get(f"{secured.url}/builds?status=failed&page=1", allow_redirects=False,
                             timeout=10)
    assert with_query.headers["Location"] == "/login?next=/builds?status%3Dfailed%26page%3D1"
    form = browser.get(secured.url + to_login.headers["Location"], timeout=10)
    assert form.status_code == 200 and 'name="token"' in form.text
    assert f'value="{page}"' in form.text  # where the form goes back to
    wrong = browser.post(f"{secured.url}/login", data={"token": "wrong-token-0123456789",
                                                       "next": page}, timeout=10)
    assert wrong.status_code == 401 and "unknown token" in wrong.text
    assert not browser.cookies
    ok = browser.post(f"{secured.url}/login", data={"token": READ, "next": page},
                      allow_redirects=False, timeout=10)
    assert ok.status_code == 303 and ok.headers["Location"] == page
    cookie = ok.headers["Set-Cookie"]
    assert "mistryd_token=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    shown = browser.get(secured.url + page, timeout=10)
    assert shown.status_code == 200 and shown.headers["Content-Type"].startswith("text/html")
    assert info["ID"] in shown.text
    # the EventSource of the page sends the cookie, not a header
    live = browser.get(f"{secured.url}/log/hello/{info['ID']}", timeout=10,
                       headers={"Accept": "text/event-stream"})
    assert live.status_code == 200 and "event: end" in live.text
    # a read cookie does not build
    assert browser.post(f"{secured.url}/jobs", json={"project": "hello"},
                        timeout=10).status_code == 403
    logout = browser.get(f"{secured.url}/logout", allow_redirects=False, timeout=10)
    assert logout.status_code == 303 and not browser.cookies
    assert browser.get(secured.url + page, allow_redirects=False, timeout=10).status_code == 302


def test_cookie_writes_need_this_servers_origin(secured):
    browser = requests.Session()
    login = browser.post(f"{secured.url}/login", data={"token": BUILD}, allow_redirects=False,
                         timeout=10)
    assert login.status_code == 303 and login.headers["Location"] == "/"
    no_origin = browser.post(f"{secured.url}/jobs", json={"project": "hello"}, timeout=10)
    assert no_origin.status_code == 403 and "Origin" in no_origin.json()["error"]
    other_port = browser.post(f"{secured.url}/jobs", json={"project": "hello"}, timeout=10,
                              headers={"Origin": "http://127.0.0.1:1"})
    assert other_port.status_code == 403
    same = browser.post(f"{secured.url}/jobs", json={"project": "hello"}, timeout=300,
                        headers={"Origin": secured.url})
    assert same.status_code == 201, same.text
    # a login form posted from another site is refused, and `next` never leaves this server
    assert requests.post(f"{secured.url}/login", data={"token": READ}, timeout=10,
                         headers={"Origin": "http://evil.example"}).status_code == 403
    for bad_next in ("//evil.example/", "https://evil.example/", "\\\\evil.example"):
        r = requests.post(f"{secured.url}/login", data={"token": READ, "next": bad_next},
                          allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["Location"] == "/"


# --- the `mistry` client -------------------------------------------------------------------------


def mistry(srv, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MISTRY_TOKEN"}
    full_env.update({"MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": srv.url.rsplit(":", 1)[1],
                     **(env or {})})
    return subprocess.run([str(MISTRY), *args], capture_output=True, text=True, timeout=300,
                          env=full_env, check=False)


def test_client_token_flag_and_env_end_to_end(secured, tmp_path):
    port = secured.url.rsplit(":", 1)[1]
    out = tmp_path / "out"
    build = ("build", "--project", "hello", "--target", str(out))
    none = mistry(secured, *build)
    assert none.returncode == 3, none.stderr
    assert f"mistryd at http://127.0.0.1:{port} needs a token: pass --token TOKEN or set " \
           "MISTRY_TOKEN" in none.stderr
    reader = mistry(secured, *build, "--token", READ)
    assert reader.returncode == 3
    assert "refused the token: token 'viewer' has role 'read' but POST /jobs needs 'build'" \
        in reader.stderr
    wrong = mistry(secured, *build, env={"MISTRY_TOKEN": "wrong-token-0123456789"})
    assert wrong.returncode == 3 and "does not accept the token given" in wrong.stderr
    # the env var: submit, follow the log stream, read the job, fetch the manifest and files
    ok = mistry(secured, *build, "--verbose", "--json-result", env={"MISTRY_TOKEN": BUILD})
    assert ok.returncode == 0, ok.stderr
    assert "hello from the build" in ok.stderr  # the SSE log, streamed with the token
    assert (out / "out.txt").read_text() == "hello\n"
    assert READ not in ok.stdout + ok.stderr and BUILD not in ok.stdout + ok.stderr
    build_id = json.loads(ok.stdout)["ID"]
    # --token wins over MISTRY_TOKEN; status and logs send it too
    status = mistry(secured, "status", "hello", build_id, "--token", READ,
                    env={"MISTRY_TOKEN": "wrong-token-0123456789"})
    assert status.returncode == 0, status.stderr
    logs = mistry(secured, "logs", "-f", "hello", build_id, env={"MISTRY_TOKEN": READ})
    assert logs.returncode == 0 and "hello from the build" in logs.stdout
    refused = mistry(secured, "logs", "hello", build_id)
    assert refused.returncode == 3 and "needs a token" in refused.stderr


# --- mistryd's start-up warning ------------------------------------------------------------------


def serve_until_listening(tmp_path: Path, addr: str, tokens: list | None) -> str:
    """Start the real `mistryd`, return its stderr up to the 'listening' line, and stop it."""
    projects = tmp_path / "p"
    projects.mkdir(exist_ok=True)
    config = tmp_path / f"config-{len(list(tmp_path.iterdir()))}.json"
    config.write_text(json.dumps({"projects_path": str(projects),
                                  "build_path": str(tmp_path / "b"), "addr": addr,
                                  "tokens": tokens or []}))
    proc = subprocess.Popen([str(MISTRYD), "--config", str(config)], stderr=subprocess.PIPE,
                            text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    assert any("listening on" in line for line in lines), "".join(lines)
    return "".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_open_server_beyond_loopback_warns_at_start(docker_engine, tmp_path):
    # 0.0.0.0 listens on every address, yet nothing here sends it traffic from elsewhere
    warned = serve_until_listening(tmp_path, f"0.0.0.0:{free_port()}", None)
    assert "WARNING no API tokens are configured and mistryd listens on 0.0.0.0" in warned
    assert "add `tokens` to the config" in warned
    quiet = serve_until_listening(tmp_path, f"127.0.0.1:{free_port()}", None)
    assert "no API tokens" not in quiet
    with_tokens = serve_until_listening(tmp_path, f"0.0.0.0:{free_port()}", TOKENS)
    assert "no API tokens" not in with_tokens
    assert BUILD not in with_tokens


def test_read_only_readers_never_see_host_paths(secured):
    """`Path` (an absolute host path, which upstream's scp transport needs) goes to the build
    and admin roles only."""
    info = secured.post_job({"project": "hello"}, headers=bearer(BUILD)).json()
    assert info["Path"].startswith("/")
    job = f"/job/hello/{info['ID']}"
    as_reader = requests.get(secured.url + job, headers={**JSON, **bearer(READ)}, timeout=30)
    assert "Path" not in as_reader.json()["BuildInfo"]
    index = requests.get(secured.url + "/index/", headers={**JSON, **bearer(READ)}, timeout=30)
    assert str(secured.build_path) not in index.text
    as_builder = requests.get(secured.url + job, headers={**JSON, **bearer(BUILD)}, timeout=30)
    assert as_builder.json()["BuildInfo"]["Path"] == info["Path"]
