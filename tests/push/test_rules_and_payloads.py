"""Pure parts of push builds: branch rules, payload mapping, signatures, config keys."""

from __future__ import annotations

import json

import pytest

from mistryd.config import Repository, from_dict
from mistryd.errors import BadRequest, ConfigError
from mistryd.jobs import JobRequest
from mistryd.push import payloads, signatures
from mistryd.push.errors import PushRefused
from mistryd.push.jobspec import (
    DEFAULT_PROJECT,
    PushMeta,
    PushSpec,
    as_configured,
    from_request,
    is_push,
    to_request,
)
from mistryd.push.rules import resolve

REPOS = {"example-org/example-repo": Repository(
    branches={"production": "make deploy", "staging": "make deploy-to-staging",
              "staging/eu": "make deploy-eu", "master/docs": "make docs"})}


@pytest.mark.parametrize("branch, task, rule", [
    ("production", "", "production"),
    ("staging/my-feature", "", "staging"),
    ("staging/eu-west", "", "staging/eu"),  # the longest prefix wins
    ("master", "docs", "master/docs"),
    ("master/hotfix", "docs", "master/docs"),
])
def test_the_longest_matching_rule_wins(branch, task, rule):
    resolved = resolve(REPOS, "example-org/example-repo", branch, task)
    assert (resolved.rule, resolved.command) == (rule, REPOS["example-org/example-repo"].branches[rule])


@pytest.mark.parametrize("name, branch, task, message", [
    ("nobody/nothing", "production", "", "Unknown project"),
    ("example-org/example-repo", "feature", "", "Not set up to build feature"),
    ("example-org/example-repo", "master", "lint", "Not set up for lint task."),
    ("example-org/example-repo", "master", "", "Not set up to build master"),
])
def test_what_no_rule_builds_is_refused_in_mixmasters_words(name, branch, task, message):
    with pytest.raises(PushRefused) as e:
        resolve(REPOS, name, branch, task)
    assert e.value.message == message and e.value.status == 422


def test_two_configurations_of_one_repository_are_ambiguous():
    repos = {"Org/Repo": Repository(branches={"main": "a"}),
             "org/repo": Repository(branches={"main": "b"})}
    assert resolve(repos, "org/repo", "main").command == "b"  # the exact name wins
    with pytest.raises(PushRefused, match="^Configuration for ORG/REPO is ambiguous$"):
        resolve(repos, "ORG/REPO", "main")


@pytest.mark.parametrize("missing", ["scm", "repositoryUrl", "project", "target"])
def test_the_lightweight_payload_names_a_missing_field(missing):
    body = {"scm": "git", "repositoryUrl": "git://h/r.git", "project": "o/r", "target": "main"}
    del body[missing]
    with pytest.raises(PushRefused, match=f"^{missing} not specified$"):
        payloads.lightweight(body)


def test_the_lightweight_payload_maps_every_field():
    push = payloads.lightweight({
        "scm": "git", "repositoryUrl": "git@git.example.com:example-org/example-repo.git",
        "project": "example-org/example-repo", "commit": "ABC123", "target": "production",
        "viewUrl": "http://gitea.example.com", "task": "docs", "notifications": "none",
        "message": "hello"})
    assert push == payloads.Push(
        repository="example-org/example-repo", branch="production",
        url="git@git.example.com:example-org/example-repo.git", commit="abc123", task="docs",
        view_url="http://gitea.example.com", message="hello", notify=False, trigger="POST /")


@pytest.mark.parametrize("field, value", [("target", "--upload-pack=x"), ("target", "a..b"),
                                          ("commit", "not-hex"), ("notifications", "some"),
                                          ("task", "a/b"), ("scm", "svn")])
def test_hostile_lightweight_fields_are_refused(field, value):
    body = {"scm": "git", "repositoryUrl": "git://h/r.git", "project": "o/r", "target": "main",
            field: value}
    with pytest.raises(PushRefused):
        payloads.lightweight(body)


# Trimmed from the forges' documentation of their push events
GITEA = {
    "ref": "refs/heads/develop", "before": "28e1879d029cb852e4844d9c718537df08844e03",
    "after": "bffeb74224043ba2feb48d137756c8a9331c449a",
    "compare_url": "http://localhost:3000/gitea/webhooks/compare/28e1879d029cb852e4844d9c718537df08844e03...bffeb74224043ba2feb48d137756c8a9331c449a",
    "commits": [{"id": "bffeb74224043ba2feb48d137756c8a9331c449a", "message": "Webhooks Yay!\n\nmore",
                 "url": "http://localhost:3000/gitea/webhooks/commit/bffeb74224043ba2feb48d137756c8a9331c449a"}],
    "repository": {"id": 140, "name": "webhooks", "full_name": "gitea/webhooks",
                   "html_url": "http://localhost:3000/gitea/webhooks",
                   "ssh_url": "ssh://gitea@localhost:2222/gitea/webhooks.git",
                   "clone_url": "http://localhost:3000/gitea/webhooks.git"},
    "pusher": {"login": "gitea"}, "sender": {"login": "gitea"}}
GITHUB = {
    "ref": "refs/heads/main", "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
    "after": "0000000000000000000000000000000000000001".replace("0001", "abcd"),
    "created": False, "deleted": False, "forced": False,
    "compare": "https://github.com/Codertocat/Hello-World/compare/6113728f27ae...000000000000",
    "commits": [{"id": "0000000000000000000000000000000000abcd", "message": "Update README.md",
                 "url": "https://github.com/Codertocat/Hello-World/commit/0000000000000000000000000000000000abcd"}],
    "repository": {"full_name": "Codertocat/Hello-World",
                   "clone_url": "https://github.com/Codertocat/Hello-World.git",
                   "ssh_url": "git@github.com:Codertocat/Hello-World.git"}}
GITLAB = {
    "object_kind": "push", "event_name": "push", "before": "95790bf891e76fee5e1747ab589903a6a1f80f22",
    "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "ref": "refs/heads/master",
    "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    "project": {"id": 15, "name": "Diaspora", "web_url": "http://example.com/mike/diaspora",
                "git_ssh_url": "git@example.com:mike/diaspora.git",
                "git_http_url": "http://example.com/mike/diaspora.git",
                "path_with_namespace": "mike/diaspora"},
    "commits": [
        {"id": "b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327",
         "message": "Update Catalan translation to e38cb41.\n",
         "url": "http://example.com/mike/diaspora/commit/b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327"},
        {"id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "message": "fixed readme",
         "url": "http://example.com/mike/diaspora/commit/da1560886d4f094c3e6c9ef40349f7d38b5d27d7"}],
    "total_commits_count": 2}


def test_a_gitea_push_maps_as_mixmaster_mapped_it():
    push = payloads.gitea(GITEA, ssh=True)
    assert push == payloads.Push(
        repository="gitea/webhooks", branch="develop", url="ssh://gitea@localhost:2222/gitea/webhooks.git",
        commit="bffeb74224043ba2feb48d137756c8a9331c449a", view_url=GITEA["compare_url"],
        message="Webhooks Yay!", trigger="POST /gitea")
    assert payloads.gitea(GITEA, ssh=False).url == "http://localhost:3000/gitea/webhooks.git"


def test_a_github_push_maps_like_giteas():
    push = payloads.github(GITHUB, ssh=False)
    assert isinstance(push, payloads.Push)
    assert (push.repository, push.branch, push.commit, push.view_url, push.url) == (
        "Codertocat/Hello-World", "main", GITHUB["after"], GITHUB["compare"],
        "https://github.com/Codertocat/Hello-World.git")
    assert isinstance(payloads.github(GITHUB, ssh=False, event="ping"), payloads.Ignored)


def test_a_gitlab_push_takes_checkout_sha_and_the_head_commits_page():
    push = payloads.gitlab(GITLAB, ssh=True)
    assert isinstance(push, payloads.Push)
    assert (push.repository, push.branch, push.commit, push.url) == (
        "mike/diaspora", "master", GITLAB["checkout_sha"], "git@example.com:mike/diaspora.git")
    assert push.view_url == GITLAB["commits"][1]["url"]
    assert push.message == "Update Catalan translation to e38cb41.\nfixed readme"


@pytest.mark.parametrize("parse, body", [
    (payloads.gitea, {**GITEA, "ref": "refs/tags/v1.0"}),
    (payloads.gitea, {**GITEA, "after": "0" * 40}),
    (payloads.github, {**GITHUB, "after": "0" * 40, "deleted": True}),
    (payloads.gitlab, {**GITLAB, "object_kind": "tag_push", "ref": "refs/tags/v1.0"}),
    (payloads.gitlab, {**GITLAB, "after": "0" * 40, "checkout_sha": None}),
])
def test_tag_pushes_and_branch_deletions_build_nothing(parse, body):
    ignored = parse(body, ssh=False)
    assert isinstance(ignored, payloads.Ignored) and "nothing to build" in ignored.note


def test_signatures_of_each_forge():
    body, secret = b'{"a": 1}', "webhook-secret"
    mac = signatures.hmac_hex(secret, body)
    assert signatures.gitea_signed(secret, body, {"X-Gitea-Signature": mac})
    assert not signatures.gitea_signed(secret, body + b" ", {"X-Gitea-Signature": mac})
    assert signatures.github_signed(secret, body, {"X-Hub-Signature-256": "sha256=" + mac})
    assert not signatures.github_signed(secret, body, {"X-Hub-Signature-256": mac})
    assert signatures.gitlab_signed(secret, body, {"X-Gitlab-Token": secret})
    assert not signatures.gitlab_signed(secret, body, {})
    assert signatures.lightweight_signed(secret, body, {"Authorization": f"Bearer {secret}"})
    assert signatures.lightweight_signed(secret, body, {"X-Gitea-Signature": mac})
    assert not signatures.lightweight_signed(secret, body, {"Authorization": "Bearer nope"})


def _config(tmp_path, **keys):
    return from_dict({"projects_path": str(tmp_path), "build_path": str(tmp_path / "b"), **keys},
                     base=tmp_path)


def test_the_push_keys_are_read_and_typed(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key")
    cfg = _config(tmp_path, repositories={"example-org/example-repo": {
        "url": "git://git.example.com/example-repo.git", "project": "shell",
        "branches": {"production": "make deploy", "master/docs": "make docs"},
        "secret": "webhook-secret", "notify": ["json://hooks.example.com/build"]}},
        notify=["mailto://user:pass@smtp.example.com:587?to=ops@example.com"],
        ssh_key="id_ed25519", dry_run=True)
    repo = cfg.repositories["example-org/example-repo"]
    assert repo.project == "shell" and repo.branches["master/docs"] == "make docs"
    assert cfg.ssh_key == key and cfg.dry_run is True and "webhook-secret" not in repr(repo)


@pytest.mark.parametrize("keys, message", [
    ({"repositories": {"o/r": {"branches": {}}}}, "repositories.o/r.branches:"),
    ({"repositories": {"o/r": {"branches": {"main": "make"}, "url": "file:///etc"}}},
     "repositories.o/r.url: \"file:///etc\" is not a git URL"),
    ({"repositories": {"o/r": {"branches": {"main": "make"}, "secrets": "x"}}},
     'repositories.o/r.secrets: unknown key (did you mean "secret"?)'),
    ({"repositories": {"nope": {"branches": {"main": "make"}}}}, "is not a repository name"),
    ({"ssh_key": "/no/such/key"}, "ssh_key: /no/such/key is not a file"),
    ({"dry_run": "yes"}, "dry_run: must be true or false"),
    ({"notify": "mailto://x"}, "notify: must be a list"),
])
def test_bad_push_keys_name_the_key(tmp_path, keys, message):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, **keys)
    assert message in e.value.message


def test_post_jobs_can_never_make_a_push_build():
    with pytest.raises(BadRequest, match="must not start with '.'"):
        JobRequest.from_json({"project": DEFAULT_PROJECT, "params": {
            ".repository": "example-org/example-repo", ".command": "make deploy",
            "_push": json.dumps({"branch": "production", "url": "git://evil/x.git"})}})
    crafted = JobRequest.from_json({"project": "hello", "params": {
        "repository": "example-org/example-repo", "_push": json.dumps({"url": "git://evil"})}})
    assert not is_push(crafted)


def test_a_queued_push_request_is_remade_from_the_config():
    spec = PushSpec(repository="example-org/example-repo", commit="a" * 40, command="old command",
                    task="", dry_run=False, meta=PushMeta(branch="staging/x", rule="staging",
                                                          url="git://h/r.git"))
    request = to_request(spec, "whatever")
    fresh = as_configured(request, REPOS, dry_run=False)
    again = from_request(fresh)
    assert fresh.project == DEFAULT_PROJECT and again.command == "make deploy-to-staging"
    assert again.meta.url == "git://h/r.git" and again.branch == "staging/x"
    assert as_configured(fresh, REPOS, dry_run=False) == fresh
    with pytest.raises(PushRefused, match="Unknown project"):
        as_configured(request, {}, dry_run=False)
