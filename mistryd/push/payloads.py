"""Webhook payloads -> one `Push`: Mixmaster's lightweight payload and the push events of Gitea,
GitHub and GitLab, mapped as Mixmaster mapped Gitea's. Pure: a dict in, a Push (or an `Ignored`
with the reason nothing is built) out; PushRefused (422) for what cannot be built."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import PushRefused

ZERO_COMMIT = re.compile(r"0+")
MAX_MESSAGE = 2000  # characters of commit messages kept for the page and the notifications


@dataclass(frozen=True)
class Push:
    repository: str  # "org/repo": the configured repository it must match
    branch: str
    url: str = ""  # the payload's repository URL ("" when it gives none)
    commit: str = ""  # "" : the branch head, resolved with git ls-remote
    task: str = ""
    view_url: str = ""
    message: str = ""
    notify: bool = True  # False: `"notifications": "none"`
    trigger: str = "POST /"  # which endpoint it came through, for the page


@dataclass(frozen=True)
class Ignored:
    """A valid event that builds nothing (a tag push, a branch deletion, a ping): 202 + note."""

    repository: str
    note: str


def _text(body: dict, name: str, required: bool = False) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise PushRefused(f"{name} not specified")
        return ""
    if not isinstance(value, str):
        raise PushRefused(f"{name} must be a string")
    if "\0" in value or any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise PushRefused(f"{name} must not contain control characters")
    return value


def _object(body: object, what: str) -> dict:
    if not isinstance(body, dict):
        raise PushRefused(f"{what} must be a JSON object")
    return body


def lightweight(body: object) -> Push:
    """`POST /` (or PUT): scm, repositoryUrl, project ("org/repo"), target required; commit,
    viewUrl, task, notifications ("all" or "none"), message optional."""
    body = _object(body, "the payload")
    scm = _text(body, "scm", required=True)
    if scm != "git":
        raise PushRefused(f"scm {scm!r} is not supported; only \"git\" is")
    url = _text(body, "repositoryUrl", required=True)
    repository = _text(body, "project", required=True)
    branch = _checked_branch(_text(body, "target", required=True))
    notifications = _text(body, "notifications") or "all"
    if notifications not in ("all", "none"):
        raise PushRefused(f"notifications must be \"all\" or \"none\", got {notifications!r}")
    task = _text(body, "task")
    if task and ("/" in task or any(c.isspace() for c in task)):
        raise PushRefused(f"task {task!r} must be one word (no '/' or spaces)")
    return Push(repository=repository, branch=branch, url=url, commit=_commit(body, "commit"),
                task=task, view_url=_link(body.get("viewUrl")),
                message=_text(body, "message")[:MAX_MESSAGE], notify=notifications == "all",
                trigger="POST /")


def gitea(body: object, ssh: bool) -> Push | Ignored:
    """Gitea's push event (GitHub's shape): repository.full_name, ref, after, compare_url."""
    return _github_like(body, ssh, "gitea", compare_key="compare_url")


def github(body: object, ssh: bool, event: str = "push") -> Push | Ignored:
    body = _object(body, "the payload")
    if event != "push":
        name = _repository_name(body.get("repository"), "full_name")
        return Ignored(name, f"{event} event: only push events build")
    return _github_like(body, ssh, "github", compare_key="compare")


def gitlab(body: object, ssh: bool) -> Push | Ignored:
    """GitLab's push hook: project.path_with_namespace, ref, checkout_sha (after), commits."""
    body = _object(body, "the payload")
    project = _object(body.get("project"), "project")
    name = _repository_name(project, "path_with_namespace")
    kind = body.get("object_kind")
    if kind == "tag_push" or str(body.get("ref", "")).startswith("refs/tags/"):
        return Ignored(name, "tag push: nothing to build")
    if kind != "push":
        return Ignored(name, f"{kind} event: only push events build")
    branch = _branch_of(body)
    after = _text(body, "after")
    if not body.get("checkout_sha") and ZERO_COMMIT.fullmatch(after or "0"):
        return Ignored(name, f"branch {branch} deleted: nothing to build")
    commit = _commit(body, "checkout_sha") or _commit(body, "after")
    commits = _commits(body)
    head = next((c for c in commits if c.get("id") == commit), commits[-1] if commits else {})
    url = _text(project, "git_ssh_url" if ssh else "git_http_url")
    return Push(repository=name, branch=branch, url=url, commit=commit,
                view_url=_link(head.get("url")) or _link(project.get("web_url")),
                message=_messages(commits), trigger="POST /gitlab")


def _github_like(body: object, ssh: bool, forge: str, compare_key: str) -> Push | Ignored:
    body = _object(body, "the payload")
    repo = _object(body.get("repository"), "repository")
    name = _repository_name(repo, "full_name")
    ref = _text(body, "ref", required=True)
    if ref.startswith("refs/tags/"):
        return Ignored(name, "tag push: nothing to build")
    branch = _branch_of(body)
    after = _text(body, "after")
    if body.get("deleted") is True or ZERO_COMMIT.fullmatch(after or "0"):
        return Ignored(name, f"branch {branch} deleted: nothing to build")
    commits = _commits(body)
    view = _link(body.get(compare_key)) or (_link(commits[0].get("url")) if commits else "")
    url = _text(repo, "ssh_url" if ssh else "clone_url")
    return Push(repository=name, branch=branch, url=url, commit=_commit(body, "after"),
                view_url=view, message=_messages(commits), trigger=f"POST /{forge}")


def _repository_name(repo: object, key: str) -> str:
    if not isinstance(repo, dict):
        raise PushRefused("repository not specified")
    name = repo.get(key)
    if not isinstance(name, str) or not name:
        raise PushRefused(f"repository {key} not specified")
    return name


def _branch_of(body: dict) -> str:
    ref = _text(body, "ref", required=True)
    if not ref.startswith("refs/heads/"):
        raise PushRefused(f"ref {ref!r} is not a branch (refs/heads/...)")
    return _checked_branch(ref[len("refs/heads/"):])


def _checked_branch(branch: str) -> str:
    """A branch name git accepts, and that cannot be read as an option."""
    if (branch.startswith(("-", "/")) or branch.endswith(("/", ".lock", ".")) or ".." in branch
            or "//" in branch or "@{" in branch or re.search(r"[\s~^:?*\[\\\x00-\x1f\x7f]", branch)):
        raise PushRefused(f"{branch!r} is not a valid branch name")
    return branch


def _commit(body: dict, key: str) -> str:
    value = _text(body, key)
    if value and not re.fullmatch(r"[0-9a-fA-F]{4,64}", value):
        raise PushRefused(f"{key} {value[:80]!r} is not a commit hash")
    return value.lower()


def _commits(body: dict) -> list[dict]:
    commits = body.get("commits")
    if not isinstance(commits, list):
        return []
    return [c for c in commits if isinstance(c, dict)]


def _messages(commits: list[dict]) -> str:
    """The commits' first lines, newest last (as the forges list them)."""
    lines = [c["message"].strip().splitlines()[0] for c in commits
             if isinstance(c.get("message"), str) and c["message"].strip()]
    return "\n".join(lines)[:MAX_MESSAGE]


def _link(value: object) -> str:
    """A view URL worth linking to: http(s) only (a page renders it as a link)."""
    if isinstance(value, str) and re.match(r"https?://[^\s]+$", value):
        return value
    return ""
