"""A token limited to groups (`"groups": ["pr-*"]`) builds, rebuilds and explains inside them
only: any other group is a 403 naming the allowed ones (docs/provenance.md)."""

from __future__ import annotations

import json

import pytest
import requests
from support import ADMIN, BUILD, READ, TOKENS, bearer

from mistryd.config import from_dict
from mistryd.errors import ConfigError

PR_BOT = "pr-bot-token-0123456789"
PR_READER = "pr-reader-token-0123456789"
LIMITED = [*TOKENS,
           {"name": "pr-bot", "token": PR_BOT, "role": "build", "groups": ["pr-*", "preview"]},
           {"name": "pr-reader", "token": PR_READER, "role": "read", "groups": ["pr-*"]}]


def post(srv, token: str, body: dict, asynchronous: bool = False, **headers: str):
    return srv.post_job(body, asynchronous=asynchronous, headers={**bearer(token), **headers})


def explain(srv, token: str, body: dict) -> requests.Response:
    return requests.get(f"{srv.url}/jobs/explain", data=json.dumps(body),
                        headers=bearer(token), timeout=60)


@pytest.mark.docker
def test_a_group_limited_token_is_refused_elsewhere_and_allowed_inside(start_server):
    srv = start_server(projects=("hello",), tokens=LIMITED)
    for group in ("main", "", "pr", "PR-1", "preview-2"):
        r = post(srv, PR_BOT, {"project": "hello", "group": group})
        assert r.status_code == 403, (group, r.text)
        error = r.json()["error"]
        assert "token 'pr-bot'" in error and "'pr-*', 'preview'" in error
        assert (f"group {group!r}" if group else "a build without a group") in error
        assert PR_BOT not in error
        assert explain(srv, PR_BOT, {"project": "hello", "group": group}).status_code == 403
    assert srv.server.store.count() == 0  # nothing was queued

    # inside its groups it builds, rebuilds (the web view's button sends this body) and explains
    built = post(srv, PR_BOT, {"project": "hello", "group": "pr-12"})
    assert built.status_code == 201 and built.json()["ExitCode"] == 0, built.text
    rebuilt = post(srv, PR_BOT, {"project": "hello", "group": "pr-12", "rebuild": True},
                   Origin=srv.url)
    assert rebuilt.status_code == 201 and rebuilt.json()["ID"] == built.json()["ID"]
    assert post(srv, PR_BOT, {"project": "hello", "group": "preview"}).status_code == 201
    assert explain(srv, PR_BOT, {"project": "hello", "group": "pr-12"}).json()["State"] == \
        "cached"

    # a read token limited to groups explains inside them only; reading builds is not limited
    assert explain(srv, PR_READER, {"project": "hello", "group": "pr-12"}).status_code == 200
    assert explain(srv, PR_READER, {"project": "hello", "group": "main"}).status_code == 403
    assert requests.get(f"{srv.url}/index/", headers=bearer(PR_READER), timeout=30) \
        .status_code == 200

    # tokens without `groups` keep today's behaviour
    for token in (BUILD, ADMIN):
        r = post(srv, token, {"project": "hello", "group": "main"})
        assert r.status_code == 201, r.text
    assert explain(srv, READ, {"project": "hello", "group": "main"}).status_code == 200


@pytest.mark.docker
def test_the_login_cookie_of_a_group_limited_token_is_limited_too(start_server):
    srv = start_server(projects=("hello",), tokens=LIMITED)
    session = requests.Session()
    login = session.post(f"{srv.url}/login", data={"token": PR_BOT, "next": "/"},
                         allow_redirects=False, timeout=30)
    assert login.status_code == 303
    # the web form's request: the same origin, the token in the cookie
    r = session.post(f"{srv.url}/jobs?async", data=json.dumps({"project": "hello",
                                                                "group": "main"}),
                     headers={"Origin": srv.url, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 403 and "'pr-*', 'preview'" in r.json()["error"]


@pytest.mark.parametrize("groups, problem", [
    ([], "must name at least one group glob"),
    ("pr-*", "must be a list"),
    ([3], "must be a string"),
])
def test_a_bad_groups_key_is_a_config_error_naming_it(tmp_path, groups, problem):
    folder = str(tmp_path)
    token = {"name": "x", "token": PR_BOT, "role": "build", "groups": groups}
    with pytest.raises(ConfigError) as e:
        from_dict({"projects_path": folder, "build_path": folder, "tokens": [token]})
    assert e.value.message.startswith("config: tokens[0].groups")
    assert problem in e.value.message
