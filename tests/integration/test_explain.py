"""GET /jobs/explain and `mistry build --explain` against a real server with real Docker builds:
the key a request would get, whether it is cached, queued or running, and what differs from the
nearest cached build (docs/provenance.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests
from support import wait_for

MISTRY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mistry"
SECRET = "s3cret-value-never-shown"

pytestmark = pytest.mark.docker


def explain(srv, body: dict | str | None = None, query: str = "", **kw) -> requests.Response:
    data = None if body is None else body if isinstance(body, str) else json.dumps(body)
    return requests.get(f"{srv.url}/jobs/explain{query}", data=data, timeout=60, **kw)


def mistry(srv, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MISTRY_HOST": srv.url}
    return subprocess.run([str(MISTRY), *args], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def test_explain_names_the_changed_file_and_the_changed_param(start_server):
    srv = start_server(projects=("hello",))
    first = srv.build("hello", group="g", params={"v": "1", "_token": SECRET})
    assert first["ExitCode"] == 0

    same = explain(srv, {"project": "hello", "group": "g",
                         "params": {"v": "1", "_token": SECRET}})
    assert same.status_code == 200, same.text
    assert same.json()["State"] == "cached" and same.json()["ID"] == first["ID"]

    # the project changes (one file modified, one added) and so does a param
    project = srv.projects_path / "hello"
    with open(project / "build.sh", "a") as f:
        f.write("echo changed\n")
    (project / "extra.txt").write_text("new\n")
    body = {"project": "hello", "group": "g", "params": {"v": "2", "_token": SECRET}}
    r = explain(srv, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert SECRET not in r.text
    assert answer["State"] == "not-cached" and answer["LastStatus"] is None
    assert answer["ID"] != first["ID"] and answer["URL"] == f"job/hello/{answer['ID']}"
    assert answer["Nearest"] == {"Project": "hello", "Group": "g", "ID": first["ID"],
                                 "URL": f"job/hello/{first['ID']}"}
    differences = answer["Differences"]
    assert differences["Files"] == [{"Path": "build.sh", "Change": "modified"},
                                    {"Path": "extra.txt", "Change": "added"}]
    assert differences["FilesChanged"] == 2
    assert differences["Params"] == [{"Name": "v", "Change": "changed", "Opaque": False,
                                      "Was": "1", "Now": "2"}]
    assert differences["Group"] is None
    assert answer["Summary"] == f"not cached; differs from build {first['ID'][:12]}: " \
                                "2 files, 1 param"

    # the same request as query parameters (an opaque param by its name, empty)
    q = explain(srv, query="?project=hello&group=g&params[v]=2&params[_token]=")
    assert q.status_code == 200, q.text
    assert q.json() == answer
    # and as `curl -X GET -d '{...}'` sends it (a form's content type)
    curl = explain(srv, body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert curl.status_code == 200 and curl.json() == answer

    # built now: its page says the same in one line, with a link to the build it differs from
    second = srv.build("hello", group="g", params={"v": "2", "_token": SECRET})
    assert second["ID"] == answer["ID"]
    assert explain(srv, body).json()["State"] == "cached"
    page = requests.get(f"{srv.url}/job/hello/{second['ID']}", headers={"Accept": "text/html"},
                        timeout=30)
    line = re.search(r'<dd id="differs">(.*?)</dd>', page.text, re.S)
    assert line is not None, page.text
    assert f'href="/job/hello/{first["ID"]}"' in line.group(1)
    assert re.sub(r"<[^>]+>", "", line.group(1)) == \
        f"differs from build {first['ID'][:12]}: 2 files, 1 param"
    # what the build keeps of its inputs names its opaque param, and holds not its value
    # (the page above has it in the log only: hello's build prints its params)
    kept = (srv.build_path / "hello" / "ready" / second["ID"] / "inputs.json").read_text()
    assert "_token" in kept and SECRET not in kept

    # the client says the same
    cli = mistry(srv, "build", "--project", "hello", "--group", "g", "--explain", "--",
                 "--v", "3")
    assert cli.returncode == 0, cli.stderr
    assert f"differs from build {second['ID'][:12]}: 1 param" in cli.stdout
    assert 'param v: changed ("2" -> "3")' in cli.stdout
    as_json = mistry(srv, "build", "--project", "hello", "-g", "g", "--explain", "--json-result",
                     "--", "--v", "2")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["State"] == "cached"


def test_a_group_without_builds_is_compared_with_the_project_s_newest(start_server):
    srv = start_server(projects=("hello",))
    main = srv.build("hello", group="main", params={"v": "1"})
    answer = explain(srv, {"project": "hello", "group": "pr-7", "params": {"v": "1"}}).json()
    assert answer["State"] == "not-cached"
    assert answer["Nearest"]["ID"] == main["ID"] and answer["Nearest"]["Group"] == "main"
    assert answer["Differences"]["Group"] == {"Was": "main", "Now": "pr-7"}
    assert answer["Differences"]["Files"] == [] and answer["Differences"]["Params"] == []
    assert answer["Summary"].endswith(": the group")


def test_explain_says_queued_or_running_and_the_last_outcome(start_server):
    srv = start_server(projects=("sleeper",), job_concurrency=1)
    first = {"project": "sleeper", "params": {"sleep": "60"}}
    second = {"project": "sleeper", "params": {"sleep": "61"}}
    nothing = explain(srv, first).json()
    assert nothing["State"] == "not-cached" and nothing["Nearest"] is None
    assert nothing["Summary"] == "not cached; no cached build of sleeper to compare with"
    ids = []
    for body in (first, second):  # one worker: the first runs, the second waits
        submitted = srv.post_job(body, asynchronous=True)
        assert submitted.status_code == 201, submitted.text
        ids.append(submitted.json()["id"])
    wait_for(lambda: explain(srv, first).json()["State"] == "running")
    queued = explain(srv, second).json()
    assert queued["ID"] == ids[1] and queued["State"] == "queued"
    assert queued["Summary"].startswith("not cached (queued)")
    for build_id in reversed(ids):
        cancelled = requests.post(f"{srv.url}/jobs/sleeper/{build_id}/cancel", timeout=120)
        assert cancelled.status_code == 200, cancelled.text
    after = explain(srv, first).json()
    assert after["State"] == "not-cached" and after["LastStatus"] == "cancelled"


@pytest.mark.parametrize("body, query, status, words", [
    ({"project": "nope"}, "", 404, "Unknown project 'nope'"),
    ({"project": "../etc"}, "", 400, "project"),
    ("not json", "", 400, "not valid JSON"),
    ({"project": "hello", "params": {"v": 1}}, "", 400, "must be a string"),
    ({"project": "hello", "colour": "red"}, "", 400, "unknown field"),
    (None, "", 400, "send the POST /jobs body"),
    (None, "?project=nope", 404, "Unknown project"),
    (None, "?project=hello&params[_token]=" + SECRET, 400, "no place for a secret"),
    ({"project": "hello"}, "?project=hello", 400, "not both"),
])
def test_bad_requests_are_answered_as_post_jobs_would(start_server, body, query, status, words):
    srv = start_server(projects=("hello",))
    r = explain(srv, body, query)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert SECRET not in r.text
