"""Trust-scoped caches of push builds: a branch that is not its rule's trusted branch starts from
the rule's group cache but publishes into a group of its own, so it never seeds what the trusted
branch builds (and deploys) from. A real server, git daemon and Docker."""

from __future__ import annotations

import requests
from push_builds import finished

from mistryd.config import Repository
from mistryd.push.jobspec import group_of
from mistryd.push.rules import trusted

REPO = "example-org/example-repo"
# the trusted branch's script: says what its cache holds, then leaves its own mark in it
STAGING_SH = ("#!/bin/sh\nset -e\nmkdir -p /data/artifacts\n"
              "ls -A /data/cache > /data/artifacts/cache-listing\n"
              "echo \"$MISTRY_COMMIT\" > /data/cache/trusted\n")
# the feature branch's script: proves where its cache came from, then poisons it
FEATURE_SH = ("#!/bin/sh\nset -e\nmkdir -p /data/artifacts\n"
              "cat /data/cache/trusted > /data/artifacts/saw-trusted\n"
              "ls -A /data/cache > /data/artifacts/cache-listing\n"
              "echo poisoned > /data/cache/marker\n")


def _push(srv, repo, branch: str) -> dict:
    r = requests.post(f"{srv.url}/", json={"scm": "git", "repositoryUrl": repo.url,
                                           "project": REPO, "target": branch}, timeout=60)
    assert r.status_code == 202, r.text
    job = finished(r.json())
    assert job["BuildInfo"]["Status"] == "succeeded", job["BuildInfo"]["ContainerStdouterr"]
    return job


def _artifact(srv, job: dict, name: str) -> str:
    r = requests.get(f"{srv.url}/artifacts/hello/{job['ID']}/{name}", timeout=30)
    assert r.status_code == 200, (name, r.status_code)
    return r.text


def test_a_feature_branch_never_seeds_its_trusted_branch(start_server, git_server):
    # the rule `staging` matches `staging-my-feature` too (git cannot hold both `staging` and
    # `staging/my-feature`: one ref would be a folder of the other)
    repo = git_server()
    first = repo.commit({"build.sh": STAGING_SH}, branch="staging")
    srv = start_server(projects=("hello",), repositories={REPO: {
        "url": repo.url, "project": "hello", "branches": {"staging": "sh build.sh"}}})
    trusted_group = group_of(REPO, "staging")

    staging = _push(srv, repo, "staging")
    assert staging["BuildInfo"]["Group"] == trusted_group
    assert staging["BuildInfo"]["CacheFrom"] is None

    repo.commit({"build.sh": FEATURE_SH}, branch="staging-my-feature")
    feature = _push(srv, repo, "staging-my-feature")
    info = feature["BuildInfo"]
    # it started from the trusted cache (a snapshot) ...
    assert info["CacheFrom"] == {"Project": "hello", "Group": trusted_group, "ID": staging["ID"]}
    assert _artifact(srv, feature, "saw-trusted").strip() == first
    # ... and its result and cache went to a group of its own
    assert info["Group"] == group_of(REPO, "staging", "staging-my-feature") != trusted_group
    assert (srv.build_path / "hello" / "groups" / trusted_group).resolve().name == staging["ID"]

    repo.commit({"build.sh": STAGING_SH, "version.txt": "2\n"}, branch="staging")
    again = _push(srv, repo, "staging")
    assert again["BuildInfo"]["CacheFrom"] == {"Project": "hello", "Group": trusted_group,
                                               "ID": staging["ID"]}
    listing = _artifact(srv, again, "cache-listing").split()
    assert "trusted" in listing and "marker" not in listing, listing

    # the feature branch's next push starts from its own last build (its own writes only)
    repo.commit({"build.sh": FEATURE_SH, "more.txt": "x\n"}, branch="staging-my-feature")
    next_feature = _push(srv, repo, "staging-my-feature")
    assert next_feature["BuildInfo"]["CacheFrom"]["ID"] == feature["ID"]
    assert "marker" in _artifact(srv, next_feature, "cache-listing").split()


def test_trusted_branches_widen_or_narrow_who_writes_a_rule_cache():
    rules = {"staging": "make stage", "release": "make release", "master/docs": "make docs"}
    default = Repository(branches=rules)
    assert trusted(default, "staging", "staging")
    assert not trusted(default, "staging", "staging-my-feature")
    assert trusted(default, "master/docs", "master", task="docs")
    assert not trusted(default, "master/docs", "master-old", task="docs")
    configured = Repository(branches=rules, trusted_branches=("release/*", "staging"))
    assert trusted(configured, "release", "release/1.2")
    assert trusted(configured, "staging", "staging")
    assert not trusted(configured, "release", "release")  # the list replaces the default
    assert not trusted(Repository(branches=rules, trusted_branches=()), "staging", "staging")
