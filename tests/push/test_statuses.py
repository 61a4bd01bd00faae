"""Forge commit statuses of push builds: the pure parts (which API, which call, which state),
then a real server whose pushes come through /gitea, /github and /gitlab and whose statuses go
to an HTTP receiver on 127.0.0.1 playing each forge's status API."""

from __future__ import annotations

import json

import pytest
import requests
from http_receiver import Receiver
from support import wait_for

from mistryd.config import Repository, from_dict
from mistryd.errors import ConfigError
from mistryd.layout import Layout
from mistryd.push import PushBuilds
from mistryd.push.statuses import StatusTarget, api_of, check, forge_of_api

TOKEN = "forge-token-1234"


# --- pure parts --------------------------------------------------------------------------------


def test_the_forge_is_told_by_its_api_base():
    assert forge_of_api("https://git.example.com/api/v1") == "gitea"
    assert forge_of_api("https://api.github.com") == "github"
    assert forge_of_api("https://ghe.example.com/api/v3/") == "github"
    assert forge_of_api("https://gitlab.example.com/api/v4") == "gitlab"
    assert forge_of_api("https://git.example.com/") is None


def test_the_api_is_made_from_the_configured_url_host():
    assert api_of("gitea", "https://git.example.com:3000/org/repo.git") == \
        "https://git.example.com:3000/api/v1"
    assert api_of("gitea", "git@git.example.com:org/repo.git") == "https://git.example.com/api/v1"
    assert api_of("github", "git@github.com:org/repo.git") == "https://api.github.com"
    assert api_of("github", "ssh://git@ghe.example.com/org/repo.git") == \
        "https://ghe.example.com/api/v3"
    assert api_of("gitlab", "git://gitlab.example.com/org/repo.git") == \
        "https://gitlab.example.com/api/v4"


def _repository(**keys) -> Repository:
    return Repository(branches={"main": "make"}, **keys)


def test_the_target_comes_from_config_and_the_endpoint_never_from_a_payload():
    with_url = _repository(url="https://git.example.com/org/repo.git", status_token=TOKEN)
    target = StatusTarget.of("org/repo", with_url, "POST /gitea")
    assert (target.forge, target.api) == ("gitea", "https://git.example.com/api/v1")
    assert StatusTarget.of("org/repo", with_url, "POST /gitlab").api == \
        "https://git.example.com/api/v4"
    assert StatusTarget.of("org/repo", with_url, "POST /") is None  # which forge? unknown
    on_github = _repository(url="git@github.com:org/repo.git", status_token=TOKEN)
    assert StatusTarget.of("org/repo", on_github, "POST /").api == "https://api.github.com"
    pinned = _repository(status_api="https://forge.example.com/api/v4/", status_token=TOKEN)
    assert (StatusTarget.of("org/repo", pinned, "POST /gitea").forge,
            StatusTarget.of("org/repo", pinned, "POST /").api) == \
        ("gitlab", "https://forge.example.com/api/v4")
    assert StatusTarget.of("org/repo", _repository(url="https://h/o/r.git"), "POST /gitea") is None


def test_each_forge_gets_its_documented_call():
    calls = {forge: StatusTarget(forge, api, "org/repo", TOKEN).call(
        "c0ffee", "success", "http://m/job/p/1", "the build succeeded", "mistryd")
        for forge, api in (("gitea", "https://g/api/v1"), ("github", "https://api.github.com"),
                           ("gitlab", "https://l/api/v4"))}
    assert calls["gitea"] == ("https://g/api/v1/repos/org/repo/statuses/c0ffee",
                              {"Authorization": f"token {TOKEN}"},
                              {"state": "success", "target_url": "http://m/job/p/1",
                               "description": "the build succeeded", "context": "mistryd"})
    url, headers, body = calls["github"]
    assert url == "https://api.github.com/repos/org/repo/statuses/c0ffee"
    assert headers["Authorization"] == f"Bearer {TOKEN}" and body["context"] == "mistryd"
    assert calls["gitlab"] == ("https://l/api/v4/projects/org%2Frepo/statuses/c0ffee",
                               {"PRIVATE-TOKEN": TOKEN},
                               {"state": "success", "target_url": "http://m/job/p/1",
                                "description": "the build succeeded", "name": "mistryd"})
    states = {forge: [StatusTarget(forge, "a", "o/r", TOKEN).state(s)
                      for s in (None, "succeeded", "failed", "timed-out", "cancelled")]
              for forge in ("gitea", "github", "gitlab")}
    assert states == {"gitea": ["pending", "success", "failure", "error", "error"],
                      "github": ["pending", "success", "failure", "error", "error"],
                      "gitlab": ["pending", "success", "failed", "failed", "canceled"]}


def test_a_token_without_an_api_is_a_config_error():
    check("repositories.o/r", _repository(url="https://h/o/r.git", status_token=TOKEN))
    check("repositories.o/r", _repository())  # no token: nothing to check
    with pytest.raises(ConfigError, match="repositories.o/r.status_token: needs `url`"):
        check("repositories.o/r", _repository(status_token=TOKEN))
    with pytest.raises(ConfigError, match="repositories.o/r.status_api: is not a forge API"):
        check("repositories.o/r", _repository(status_api="https://h/", status_token=TOKEN))


def test_the_server_refuses_a_token_it_could_not_use(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "b").mkdir()
    config = from_dict({"projects_path": str(tmp_path / "p"), "build_path": str(tmp_path / "b"),
                        "repositories": {"o/r": {"branches": {"main": "make"},
                                                 "status_token": TOKEN}}})
    with pytest.raises(ConfigError, match="status_token"):
        PushBuilds(config, Layout(config.build_path))


# --- a real server, the receiver playing the forges --------------------------------------------


FORGES = {"gitea": "/api/v1", "github": "/api/v3", "gitlab": "/api/v4"}


def _push(url: str, forge: str, name: str, commit: str) -> dict:
    if forge == "gitlab":
        body = {"object_kind": "push", "ref": "refs/heads/production", "before": "0" * 40,
                "after": commit, "checkout_sha": commit, "commits": [],
                "project": {"path_with_namespace": name, "git_http_url": "ignored"}}
    else:
        body = {"ref": "refs/heads/production", "before": "0" * 40, "after": commit,
                "commits": [], "repository": {"full_name": name, "clone_url": "ignored"}}
    event = {"gitea": "X-Gitea-Event", "github": "X-GitHub-Event", "gitlab": "X-Gitlab-Event"}
    r = requests.post(f"{url}/{forge}", data=json.dumps(body), timeout=60,
                      headers={"Content-Type": "application/json",
                               event[forge]: "Push Hook" if forge == "gitlab" else "push"})
    assert r.status_code == 202, r.text
    return r.json()


def _ended(answer: dict) -> str:
    found = {}

    def ended():
        found.update(requests.get(answer["url"], headers={"Accept": "application/json"},
                                  timeout=30).json())
        return found["State"] == "ready"

    wait_for(ended, timeout=240)
    return found["BuildInfo"]["Status"]


def test_statuses_reach_gitea_github_and_gitlab(start_server, git_server):
    receiver = Receiver(answers=(503,))  # the first call fails: it is tried again, in order
    try:
        repo = git_server()
        commit = repo.commit({"a.txt": "1\n"}, branch="production")
        commands = {"gitea": "echo ok", "github": "exit 4", "gitlab": "echo ok"}
        srv = start_server(projects=("hello",), repositories={
            f"example-org/on-{forge}": {
                "url": repo.url, "project": "hello", "branches": {"production": commands[forge]},
                "status_token": f"{TOKEN}-{forge}", "status_api": receiver.url + api,
                "notify": []}
            for forge, api in FORGES.items()})
        answers = {}
        for forge in FORGES:
            answers[forge] = _push(srv.url, forge, f"example-org/on-{forge}", commit)
            assert _ended(answers[forge]) == ("failed" if forge == "github" else "succeeded")
        assert srv.server.push.reports.delivery.idle(60)
        calls = receiver.wait_for(7)
        assert len(receiver.received) == 7  # gitea's first pending was answered 503, then sent
        seen = {}
        for call in calls:
            assert call.method == "POST"
            seen.setdefault(call.path, []).append(call)

        gitea = seen[f"/api/v1/repos/example-org/on-gitea/statuses/{commit}"]
        assert [c.body["state"] for c in gitea] == ["pending", "pending", "success"]
        assert {c.headers["authorization"] for c in gitea} == {f"token {TOKEN}-gitea"}
        assert {c.body["target_url"] for c in gitea} == {answers["gitea"]["url"]}
        assert {c.body["context"] for c in gitea} == {"mistryd"}

        github = seen[f"/api/v3/repos/example-org/on-github/statuses/{commit}"]
        assert [c.body["state"] for c in github] == ["pending", "failure"]
        assert {c.headers["authorization"] for c in github} == {f"Bearer {TOKEN}-github"}
        assert {c.body["target_url"] for c in github} == {answers["github"]["url"]}

        gitlab = seen[f"/api/v4/projects/example-org%2Fon-gitlab/statuses/{commit}"]
        assert [c.body["state"] for c in gitlab] == ["pending", "success"]
        assert {c.headers["private-token"] for c in gitlab} == {f"{TOKEN}-gitlab"}
        assert "authorization" not in gitlab[0].headers
        assert {c.body["target_url"] for c in gitlab} == {answers["gitlab"]["url"]}
        assert {c.body["name"] for c in gitlab} == {"mistryd"}

        metrics = srv.server.metrics.notifications
        assert metrics.labels("status", "sent")._value.get() == 6
        assert metrics.labels("status", "retried")._value.get() == 1
    finally:
        receiver.close()
