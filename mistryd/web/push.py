"""The webhook endpoints of push builds (docs/push.md): Mixmaster's `POST /` (and `PUT /`),
`POST /gitea`, `/github`, `/gitlab`, and `GET /version`. Answers: 202 with the build's id and
page for an accepted push (the same build for a redelivery), 202 with a note for an event that
builds nothing, 401 for a missing or wrong proof of the repository's secret, 422 with
Mixmaster's messages, as plain text unless the request asks for JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qs

from flask import Blueprint, Response, current_app, jsonify, request

from .. import __version__
from ..config import Repository
from ..errors import BadRequest, MistryError
from ..hits import Hit
from ..push import payloads
from ..push.errors import NotSigned
from ..push.signatures import SIGNED_BY, bearer
from ..server import Server
from .auth import ROLE_RANK, match_token

bp = Blueprint("push", __name__)

# the header each endpoint proves the secret with, for the 401's message
PROOF = {"": "X-Gitea-Signature or 'Authorization: Bearer <secret>'",
         "gitea": "X-Gitea-Signature", "github": "X-Hub-Signature-256", "gitlab": "X-Gitlab-Token"}


def server() -> Server:
    return current_app.extensions["mistryd"]


@bp.route("/", methods=["POST", "PUT"])
def lightweight():
    return _accept("", lambda body, ssh: payloads.lightweight(body))


@bp.post("/gitea")
def gitea():
    return _accept("gitea", payloads.gitea)


@bp.post("/github")
def github():
    event = request.headers.get("X-GitHub-Event", "push")
    return _accept("github", lambda body, ssh: payloads.github(body, ssh, event))


@bp.post("/gitlab")
def gitlab():
    return _accept("gitlab", payloads.gitlab)


@bp.get("/version")
def version():
    return Response(f"{__version__}\n", mimetype="text/plain")


def _accept(forge: str, parse: Callable[[object, bool], payloads.Push | payloads.Ignored]):
    srv = server()
    raw = request.get_data(cache=True)
    push = parse(_payload(raw), bool(srv.config.ssh_key))
    name, repository = srv.push.repository(push.repository)
    _check_proof(forge, repository, raw)
    if isinstance(push, payloads.Ignored):
        return jsonify(repository=name, note=push.note), 202
    job_request = srv.push.request_for(push, page=request.url_root)
    build_id, outcome = srv.submit(job_request)
    spec = job_request.params
    answer = {"id": build_id, "url": f"{request.url_root}job/{job_request.project}/{build_id}",
              "project": job_request.project, "repository": name, "branch": push.branch,
              "commit": spec[".commit"], "task": push.task,
              "cached": isinstance(outcome, Hit),
              "coalesced": not isinstance(outcome, Hit) and outcome.coalesced}
    return jsonify(answer), 202


def _payload(raw: bytes) -> object:
    """The JSON body; GitHub may send it form-encoded as `payload=...`."""
    text = raw.decode("utf-8", "replace")
    if request.mimetype == "application/x-www-form-urlencoded":
        text = (parse_qs(text).get("payload") or [""])[0]
    if not text.strip():
        raise BadRequest("the request body is empty; send the push event's JSON")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e})") from None


def _check_proof(forge: str, repository: Repository, raw: bytes) -> None:
    """The repository's secret must be proven when it has one; else, on a server with tokens,
    a token with role build or higher is needed (a secret is accepted in place of a token)."""
    if repository.secret:
        if not SIGNED_BY[forge](repository.secret, raw, request.headers):
            raise NotSigned(f"the request does not prove the repository's secret; send "
                            f"{PROOF[forge]} (see docs/push.md)")
        return
    tokens = srv_tokens()
    if not tokens:
        return
    token = match_token(bearer(request.headers.get("Authorization")) or "", tokens)
    if token is None or ROLE_RANK[token.role] < ROLE_RANK["build"]:
        raise NotSigned("this server needs a token with role 'build' or higher as "
                        "'Authorization: Bearer <token>', or a `secret` for the repository")


def srv_tokens():
    return server().config.tokens


@bp.errorhandler(MistryError)
def refused(e: MistryError):
    """Plain text, as Mixmaster answers, unless the request asks for JSON."""
    if _wants_json():
        response = jsonify(error=e.message)
    else:
        response = Response(e.message + "\n", mimetype="text/plain")
    response.status_code = e.status
    if e.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mistryd"'
    if e.retry_after:
        response.headers["Retry-After"] = str(e.retry_after)
    return response


def _wants_json() -> bool:
    accept = request.accept_mimetypes
    return accept["application/json"] > accept["text/plain"] or (
        accept.best == "application/json")
