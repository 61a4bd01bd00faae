"""Bad input gets a 4xx with a JSON error that says what is wrong; nothing is written outside
build_path."""

import os

import pytest
import requests


def tree(path):
    return sorted(os.path.relpath(os.path.join(d, n), path)
                  for d, dirs, files in os.walk(path) for n in dirs + files)


@pytest.fixture
def srv(start_server):
    return start_server()


@pytest.mark.parametrize("body, status, message", [
    ("{not json", 400, "not valid JSON"),
    ("", 400, "body is empty"),
    (b"\xff\xfe", 400, "not valid JSON"),
    ('["hello"]', 400, "JSON object"),
    ('{"project": 1}', 400, "'project' is required"),
    ('{"project": "hello", "params": {"a": 1}}', 400, "param 'a' must be a string"),
    ('{"project": "hello", "params": "a=b"}', 400, "'params' must be an object"),
    ('{"project": "hello", "group": ["g"]}', 400, "'group' must be a string"),
    ('{"project": "nope"}', 404, "Unknown project 'nope'"),
    ('{"project": "../hello"}', 400, "must not contain '/'"),
    ('{"project": ".."}', 400, "must not start with '.'"),
    ('{"project": "hello\\u0000"}', 400, "NUL"),
    ('{"project": "hello", "group": "../../etc"}', 400, "must not contain '/'"),
    ('{"project": "hello", "group": "..evil"}', 400, "must not start with '.'"),
    ('{"project": "hello", "params": {"../../x": "y"}}', 400, "must not contain '/'"),
    ('{"project": "hello", "params": {".bashrc": "y"}}', 400, "must not start with '.'"),
    ('{"project": "hello", "params": {"a\\u0000b": "y"}}', 400, "NUL"),
])
def test_bad_requests(srv, body, status, message):
    before = tree(srv.build_path.parent)
    r = srv.post_job(body)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert message in r.json()["error"]
    after = [p for p in tree(srv.build_path.parent) if not p.startswith("builds/.mistryd")]
    assert after == [p for p in before if not p.startswith("builds/.mistryd")]


def test_oversized_body_is_413(srv):
    r = srv.post_job('{"project": "hello", "params": {"a": "' + "x" * (2 << 20) + '"}}')
    assert r.status_code == 413
    assert "error" in r.json()


def test_wrong_method_and_unknown_paths(srv):
    r = requests.get(f"{srv.url}/jobs", timeout=10)
    assert r.status_code == 405 and "POST" in r.headers["Allow"] and "error" in r.json()
    assert requests.get(f"{srv.url}/nothing-here", timeout=10).status_code == 404
    for path in ("/job/..%2F..%2Fetc/passwd", "/job/hello/..", "/log/.mistryd/index",
                 "/job/hello/%00"):
        r = requests.get(srv.url + path, headers={"Accept": "application/json"}, timeout=10)
        assert r.status_code == 404, path


def test_a_browser_gets_an_html_not_found_page_and_an_api_client_json(srv):
    html = requests.get(f"{srv.url}/no/such/page", timeout=10,
                        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert html.status_code == 404 and html.headers["Content-Type"].startswith("text/html")
    assert "/no/such/page" in html.text
    api = requests.get(f"{srv.url}/no/such/page", timeout=10)
    assert api.status_code == 404 and "error" in api.json()
