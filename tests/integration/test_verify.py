"""Rebuild and diff (POST /jobs/verify): a real server, real Docker, real artifacts compared."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import requests
from support import wait_for

MISTRY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mistry"

SAME = {"project": "verify-same", "group": "g", "params": {"who": "Ada"}}
STAMP = {"project": "verify-stamp"}


def _verify(srv, body: dict, query: str = "") -> requests.Response:
    return requests.post(f"{srv.url}/jobs/verify{query}", data=json.dumps(body), timeout=300)


def test_a_deterministic_build_is_reproducible_and_nothing_else_changes(start_server):
    srv = start_server(projects=("verify-same",))
    built = srv.post_job(SAME)
    assert built.status_code == 201, built.text
    build_id = built.json()["ID"]
    project = srv.build_path / "verify-same"
    before = sorted(p.name for p in (project / "ready").iterdir())

    r = _verify(srv, SAME)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["ID"] == build_id and answer["Status"] == "succeeded", answer
    assert answer["Reproducible"] is True and answer["Differences"] == [], answer
    assert answer["Compared"] == 4  # docs, docs/readme.txt, greeting.txt, link
    assert answer["Summary"] == "reproducible: 4 artifact entries identical"

    # recorded on the cached build: its record, the index and its page; upstream's fields kept
    job = requests.get(f"{srv.url}/job/verify-same/{build_id}",
                       headers={"Accept": "application/json"}, timeout=30).json()
    info = job["BuildInfo"]
    assert info["Reproducible"] is True and info["VerifiedAt"] == answer["VerifiedAt"]
    assert info["ExitCode"] == 0 and info["StartedAt"] == built.json()["StartedAt"]
    on_disk = json.loads((project / "ready" / build_id / "build_info.json").read_text())
    assert on_disk["Reproducible"] is True
    assert srv.server.store.get("verify-same", build_id).info["Reproducible"] is True
    page = requests.get(f"{srv.url}/job/verify-same/{build_id}", timeout=30).text
    assert "reproducible: 4 artifact entries identical" in page
    again = srv.post_job(SAME).json()  # a cache hit answers the record with the verdict
    assert again["Cached"] is True and again["Reproducible"] is True

    # the verification left nothing: no build, no folder, the group's cache where it was
    assert sorted(p.name for p in (project / "ready").iterdir()) == before
    assert (project / "groups" / "g").resolve().name == build_id
    assert not list((srv.build_path / ".mistryd" / "verify").glob("*/*"))
    assert not (project / "pending").exists() or not list((project / "pending").iterdir())
    assert srv.server.store.count(project="verify-same") == 1
    recorded = requests.get(f"{srv.url}/jobs/verify/verify-same/{build_id}", timeout=30).json()
    assert recorded["Reproducible"] is True and recorded["State"] == "done"

    # a build that started from its group's cache is rebuilt from that same cache
    second = {**SAME, "params": {"who": "Grace"}}
    later = srv.post_job(second).json()
    assert later["CacheFrom"]["ID"] == build_id
    answer = _verify(srv, second).json()
    assert answer["Reproducible"] is True
    assert answer["CacheFrom"] == {"Project": "verify-same", "Group": "g", "ID": build_id}
    assert (project / "groups" / "g").resolve().name == later["ID"]


def test_a_timestamp_is_named_and_the_answer_has_both_sides(start_server):
    srv = start_server(projects=("verify-stamp",))
    built = srv.post_job(STAMP)
    assert built.status_code == 201, built.text
    build_id = built.json()["ID"]

    r = _verify(srv, STAMP, "?no-image-cache")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["Reproducible"] is False and answer["ImageCache"] is False, answer
    assert answer["DifferencesCount"] == 1 and answer["Compared"] == 2
    (diff,) = answer["Differences"]
    assert diff["Path"] == "stamp.txt" and diff["Change"] == "modified"
    cached = (srv.build_path / "verify-stamp" / "ready" / build_id / "data" / "artifacts"
              / "stamp.txt").read_bytes()
    assert diff["Cached"]["Size"] == len(cached) and diff["Rebuilt"]["Size"] > 0
    assert diff["Cached"]["Sha256"] != diff["Rebuilt"]["Sha256"]
    assert "stamp.txt" in answer["Summary"] and answer["Summary"].startswith("not reproducible")
    page = requests.get(f"{srv.url}/job/verify-stamp/{build_id}", timeout=30).text
    assert "not reproducible" in page and "stamp.txt" in page
    assert srv.server.store.get("verify-stamp", build_id).info["Reproducible"] is False
    # the verification's own image is gone (its tag was for it only)
    tags = [t for i in srv.server.runner.client.images.list() for t in i.tags]
    assert not [t for t in tags if "-verify-" in t], tags

    # async: 202 at once, then the verification's state
    r = _verify(srv, STAMP, "?async")
    assert r.status_code == 202 and r.json()["State"] == "running", r.text
    status: dict = {}

    def done() -> bool:
        status.update(requests.get(f"{srv.url}/jobs/verify/verify-stamp/{build_id}",
                                   timeout=30).json())
        return status["State"] == "done" and status["VerifiedAt"] != answer["VerifiedAt"]

    wait_for(done, timeout=120)
    assert status["Reproducible"] is False and status["ImageCache"] is True


def test_what_cannot_be_verified_is_refused_in_one_line(start_server):
    srv = start_server(projects=("verify-same",))
    cases = [
        ({"project": "verify-same", "params": {"who": "nobody built"}}, 404, "no cached build"),
        ({"project": "nope"}, 404, "nope"),
        ({"project": "verify-same", "surprise": 1}, 400, "unknown field"),
    ]
    for body, status, words in cases:
        r = _verify(srv, body)
        assert r.status_code == status and words in r.json()["error"], (body, r.text)
    r = requests.get(f"{srv.url}/jobs/verify/verify-same/{'0' * 64}", timeout=30)
    assert r.status_code == 404 and "has not been verified" in r.json()["error"]


def _mistry(srv, *args: str) -> subprocess.CompletedProcess:
    """The installed `mistry` command against the test server."""
    port = srv.url.rsplit(":", 1)[1]
    env = {**os.environ, "MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": port}
    return subprocess.run([str(MISTRY), *args], capture_output=True, text=True, timeout=300,
                          env=env, check=False)


def test_mistry_verify_says_it_and_exits_by_the_verdict(start_server):
    srv = start_server(projects=("verify-same", "verify-stamp"))
    assert srv.post_job(SAME).status_code == 201 and srv.post_job(STAMP).status_code == 201
    same = _mistry(srv, "verify", "--project", "verify-same", "-g", "g", "--", "--who", "Ada")
    assert same.returncode == 0, same.stderr
    assert "reproducible: 4 artifact entries identical" in same.stdout
    stamp = _mistry(srv, "verify", "--project", "verify-stamp", "--no-image-cache")
    assert stamp.returncode == 1, stamp.stderr
    assert "not reproducible" in stamp.stdout
    assert re.search(r"stamp\.txt: modified \(cached: \d+ bytes sha256 [0-9a-f]{16}; "
                     r"rebuilt: \d+ bytes sha256 [0-9a-f]{16}\)", stamp.stdout), stamp.stdout
    missing = _mistry(srv, "verify", "--project", "verify-same")  # group "" was never built
    assert missing.returncode == 3 and "no cached build" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_token_limited_to_groups_verifies_only_those(start_server):
    tokens = [{"name": "pr-bot", "token": "pr-token-0123456789", "role": "build",
               "groups": ["pr-*"]},
              {"name": "viewer", "token": "read-token-0123456789", "role": "read"}]
    srv = start_server(projects=("verify-same",), tokens=tokens)
    for token, status in (("pr-token-0123456789", 403), ("read-token-0123456789", 403)):
        r = requests.post(f"{srv.url}/jobs/verify", json=SAME, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == status, r.text
    assert "pr-*" in requests.post(f"{srv.url}/jobs/verify", json=SAME, timeout=30, headers={
        "Authorization": "Bearer pr-token-0123456789"}).json()["error"]
