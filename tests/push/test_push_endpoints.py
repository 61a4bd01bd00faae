"""The webhook endpoints against a real server, a real git daemon and real Docker."""

from __future__ import annotations

import json

import requests
from push_builds import finished
from support import wait_for

from mistryd.push.signatures import hmac_hex

REPO = "example-org/example-repo"
BUILD_SH = ("#!/bin/sh\nset -e\necho \"building $MISTRY_REPOSITORY $MISTRY_BRANCH $MISTRY_COMMIT "
            "task=$MISTRY_TASK\"\ncat version.txt\nmkdir -p /data/artifacts\n"
            "cp version.txt /data/artifacts/\necho to-stderr >&2\n")


def _server(start_server, repo, **repository):
    return start_server(projects=("hello",), repositories={REPO: {
        "url": repo.url, "project": "hello",
        "branches": {"production": "sh build.sh", "staging": "sh build.sh",
                     "master/docs": "echo docs > /data/artifacts/docs.txt"}, **repository}})


def _payload(repo, target="production", **more):
    return {"scm": "git", "repositoryUrl": repo.url, "project": REPO, "target": target, **more}


def test_a_push_is_built_on_the_job_machinery(start_server, git_server):
    repo = git_server()
    commit = repo.commit({"build.sh": BUILD_SH, "version.txt": "v1\n"}, branch="production")
    srv = _server(start_server, repo)
    r = requests.post(f"{srv.url}/", json=_payload(repo), timeout=60)  # no commit: ls-remote
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["commit"] == commit and answer["url"].startswith(srv.url + "/job/hello/")
    job = finished(answer)
    info = job["BuildInfo"]
    assert info["Status"] == "succeeded", info
    log = info["ContainerStdouterr"]
    assert f"building {REPO} production {commit} task=" in log and "v1" in log
    assert "mistryd: cloning" in log and "outcome: succeeded, exit code 0" in log
    assert info["Params"][".commit"] == commit
    art = requests.get(f"{srv.url}/artifacts/hello/{answer['id']}/version.txt", timeout=30)
    assert art.text == "v1\n"

    # a redelivery (now with the commit) is the same build, answered from cache
    again = requests.post(f"{srv.url}/", json=_payload(repo, commit=commit), timeout=60).json()
    assert again["id"] == answer["id"] and again["cached"] is True

    # a second push fetches into the checkout the first one left in the group's cache
    second = repo.commit({"version.txt": "v2\n"}, branch="production")
    hook = json.dumps({"ref": "refs/heads/production", "after": second, "commits": [],
                       "repository": {"full_name": REPO, "clone_url": "ignored"}})
    r = requests.post(f"{srv.url}/gitea", data=hook, timeout=60,
                      headers={"Content-Type": "application/json", "X-Gitea-Event": "push"})
    assert r.status_code == 202, r.text
    info = finished(r.json())["BuildInfo"]
    assert info["Status"] == "succeeded" and info["Incremental"] is True
    log = info["ContainerStdouterr"]
    assert "fetching" in log and "into the existing checkout" in log and "cloning" not in log
    assert "v2" in log


def test_a_prefix_branch_and_a_task_build(start_server, git_server):
    repo = git_server()
    feature = repo.commit({"build.sh": BUILD_SH, "version.txt": "feature\n"}, branch="staging/my-feature")
    master = repo.commit({"version.txt": "master\n"}, branch="master")
    srv = _server(start_server, repo)
    r = requests.post(f"{srv.url}/", json=_payload(repo, "staging/my-feature"), timeout=60)
    assert r.status_code == 202, r.text
    log = finished(r.json())["BuildInfo"]["ContainerStdouterr"]
    assert f"building {REPO} staging/my-feature {feature}" in log
    r = requests.post(f"{srv.url}/", json=_payload(repo, "master", task="docs"), timeout=60)
    assert r.status_code == 202 and r.json()["commit"] == master
    job = finished(r.json())
    assert job["BuildInfo"]["Status"] == "succeeded"
    docs = requests.get(f"{srv.url}/artifacts/hello/{job['ID']}/docs.txt", timeout=30)
    assert docs.text == "docs\n"


def test_refusals_in_mixmasters_words(start_server, git_server):
    repo = git_server()
    repo.commit({"build.sh": BUILD_SH}, branch="production")
    srv = _server(start_server, repo)
    cases = [
        ({"scm": "git", "project": REPO, "target": "production"}, "repositoryUrl not specified"),
        (_payload(repo) | {"project": "nobody/else"}, "Unknown project"),
        (_payload(repo, "feature"), "Not set up to build feature"),
        (_payload(repo, "master", task="lint"), "Not set up for lint task."),
        (_payload(repo) | {"repositoryUrl": "git://127.0.0.1:1/other.git"},
         f"repositoryUrl git://127.0.0.1:1/other.git is not the url configured for {REPO}"),
    ]
    for body, message in cases:
        r = requests.post(f"{srv.url}/", json=body, timeout=30)
        assert (r.status_code, r.text, r.headers["Content-Type"]) == (
            422, message + "\n", "text/plain; charset=utf-8")
        r = requests.put(f"{srv.url}/", json=body, headers={"Accept": "application/json"}, timeout=30)
        assert (r.status_code, r.json()) == (422, {"error": message})
    r = requests.get(f"{srv.url}/version", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain") and r.text.strip()
    assert srv.server.store.count() == 0  # nothing was built


def test_signatures_are_checked_and_tags_build_nothing(start_server, git_server):
    repo = git_server()
    commit = repo.commit({"build.sh": BUILD_SH, "version.txt": "v\n"}, branch="production")
    secret = "webhook-secret"
    srv = _server(start_server, repo, secret=secret)
    body = json.dumps({"ref": "refs/heads/production", "after": commit,
                       "repository": {"full_name": REPO}}).encode()
    headers = {"Content-Type": "application/json"}
    bad = {"/gitea": {"X-Gitea-Signature": hmac_hex("wrong", body)},
           "/github": {"X-Hub-Signature-256": "sha256=" + hmac_hex("wrong", body)},
           "/gitlab": {"X-Gitlab-Token": "wrong"}, "/": {"Authorization": "Bearer wrong"}}
    gitlab = json.dumps({"object_kind": "push", "ref": "refs/heads/production", "after": commit,
                         "checkout_sha": commit, "project": {"path_with_namespace": REPO}}).encode()
    bodies = {"/": json.dumps(_payload(repo)).encode(), "/gitlab": gitlab}
    for path, proof in bad.items():
        data = bodies.get(path, body)
        for sent in (proof, {}):
            r = requests.post(srv.url + path, data=data, headers={**headers, **sent}, timeout=30)
            assert r.status_code == 401, (path, r.text)
    assert srv.server.store.count() == 0
    tag = json.dumps({"ref": "refs/tags/v1", "after": commit, "repository": {"full_name": REPO}}).encode()
    r = requests.post(f"{srv.url}/github", data=tag, timeout=30, headers={
        **headers, "X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + hmac_hex(secret, tag)})
    assert r.status_code == 202 and "tag push" in r.json()["note"]
    assert srv.server.store.count() == 0
    r = requests.post(f"{srv.url}/github", data=body, timeout=30, headers={
        **headers, "X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + hmac_hex(secret, body)})
    assert r.status_code == 202, r.text
    assert finished(r.json())["BuildInfo"]["Status"] == "succeeded"
    r = requests.post(f"{srv.url}/", json=_payload(repo), timeout=30,
                      headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 202 and r.json()["cached"] is True


def test_post_jobs_cannot_start_a_push_build(start_server, git_server):
    """A BUILD-token client crafts push params: refused, and no git server is ever asked."""
    repo = git_server()
    repo.commit({"build.sh": BUILD_SH}, branch="production")
    srv = _server(start_server, repo)
    crafted = {"project": "hello", "params": {".repository": REPO, ".command": "sh build.sh",
                                               ".commit": "a" * 40}}
    r = srv.post_job(crafted)
    assert r.status_code == 400 and "must not start with '.'" in r.json()["error"]
    r = srv.post_job({"project": "mistryd-push", "params": {"_push": json.dumps(
        {"branch": "production", "url": repo.url})}})
    assert r.status_code == 404  # the default push project is no project of POST /jobs
    r = srv.post_job({"project": "hello", "params": {"repository": REPO, "_push": json.dumps(
        {"branch": "production", "url": repo.url})}})
    assert r.status_code == 201 and "mistryd: cloning" not in r.json()["ContainerStdouterr"]
    assert b"example-repo.git" not in git_server.log.read_bytes()  # never fetched


def test_the_default_project_and_tokens(start_server, git_server):
    """A repository without `project` runs in the image shipped in the package (make, git, ssh);
    on a server with tokens a webhook needs a build token when the repository has no secret."""
    repo = git_server()
    makefile = "deploy:\n\tgit --version\n\tssh -V\n\techo made > /data/artifacts/out\n"
    commit = repo.commit({"Makefile": makefile},
                         branch="production")
    token = "b" * 32
    srv = start_server(projects=(), tokens=[{"name": "ci", "token": token, "role": "build"}],
                       repositories={REPO: {"url": repo.url,
                                            "branches": {"production": "make deploy"}}})
    r = requests.post(f"{srv.url}/", json=_payload(repo), timeout=30)
    assert r.status_code == 401 and "token" in r.text
    r = requests.post(f"{srv.url}/", json=_payload(repo), timeout=60,
                      headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 202 and r.json()["project"] == "mistryd-push", r.text
    answer = r.json()
    job = {}

    def ended():
        nonlocal job
        job = requests.get(answer["url"], timeout=30, headers={
            "Accept": "application/json", "Authorization": f"Bearer {token}"}).json()
        return job["State"] == "ready"

    wait_for(ended, timeout=600)  # the first build of the default image installs packages
    info = job["BuildInfo"]
    assert info["Status"] == "succeeded", info["ContainerStdouterr"][-3000:]
    assert "git version" in info["ContainerStdouterr"] and "OpenSSH" in info["ContainerStdouterr"]
    assert info["Params"][".commit"] == commit


def test_a_dry_run_logs_what_would_run_and_runs_nothing(start_server, git_server):
    repo = git_server()
    commit = repo.commit({"build.sh": BUILD_SH, "version.txt": "v\n"}, branch="production")
    srv = start_server(projects=("hello",), dry_run=True, repositories={REPO: {
        "url": repo.url, "project": "hello", "branches": {"production": "sh build.sh"}}})
    r = requests.post(f"{srv.url}/", json=_payload(repo, commit=commit), timeout=30)
    assert r.status_code == 202, r.text
    info = finished(r.json())["BuildInfo"]
    log = info["ContainerStdouterr"]
    assert info["Status"] == "succeeded" and "dry run" in log
    assert "would run: git fetch" in log and "would run: sh -c 'sh build.sh'" in log
    assert f"building {REPO}" not in log  # the command did not run
    assert b"example-repo.git" not in git_server.log.read_bytes()  # nor did git
