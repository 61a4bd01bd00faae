"""A push build as a JobRequest, so it rides the same key, cache, coalescing, queue and log as
every other build, and survives the queue (a queued row is all a builder gets after a restart).

What makes a request a push build are its param keys starting with '.': `POST /jobs` refuses such
keys (mistryd/names.py), so only the webhook endpoints make them, and a BUILD-token client can
never make the server fetch a URL of its choosing with the deploy key. They are key params: the
key is the repository, the resolved commit, the command and the task (and a dry run's mark), so a
redelivered push is answered from cache or joins. What is not part of the key (branch, view URL,
message, trigger, notifications, the payload's URL) travels in the opaque `_push` param, kept in
the index while the job may still run and never shown or answered.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..jobs import JobRequest
from .rules import resolve, trusted

REPOSITORY, COMMIT, COMMAND, TASK, DRY_RUN = ".repository", ".commit", ".command", ".task", ".dry-run"
META = "_push"
# the image a push build's command runs in when its repository names no `project`: shipped inside
# the package (make, git, an ssh client), whatever projects_path holds
DEFAULT_PROJECT = "mistryd-push"
DEFAULT_PROJECT_FOLDER = Path(__file__).resolve().parent / "project"


@dataclass(frozen=True)
class PushMeta:
    """What a push build carries besides its key."""

    branch: str
    rule: str = ""
    url: str = ""  # the payload's URL; "" when the repository's configured `url` is fetched
    view_url: str = ""
    message: str = ""
    trigger: str = ""
    notify: bool = True
    page: str = ""  # the server's address as the webhook reached it, for links in notifications


@dataclass(frozen=True)
class PushSpec:
    """Everything a builder needs to do a push build's git work and run its command."""

    repository: str
    commit: str
    command: str
    task: str
    dry_run: bool
    meta: PushMeta

    @property
    def branch(self) -> str:
        return self.meta.branch


def is_push(request: JobRequest) -> bool:
    return REPOSITORY in request.params


def group_of(repository: str, rule: str, branch: str | None = None) -> str:
    """The group of a repository's branch rule (its builds share /data/cache, so the checkout is
    fetched, not cloned, by the next push): a readable name that is a safe path component. With
    `branch`: the group of its own that an untrusted branch of the rule builds in."""
    parts = [repository, rule] if branch is None else [repository, rule, branch]
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")[:120]
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:10]
    return f"push-{slug}-{digest}"


def to_request(spec: PushSpec, project: str, trusted: bool = True) -> JobRequest:
    """`trusted`: the branch may write its rule's group cache (rules.trusted); else the build's
    group is the branch's own."""
    params = {REPOSITORY: spec.repository, COMMIT: spec.commit, COMMAND: spec.command,
              TASK: spec.task, META: json.dumps(asdict(spec.meta), sort_keys=True)}
    if spec.dry_run:
        params[DRY_RUN] = "1"
    group = group_of(spec.repository, spec.meta.rule, None if trusted else spec.branch)
    return JobRequest(project=project, params=params, group=group)


def seed_groups(request: JobRequest) -> tuple[str, ...]:
    """The groups whose last good build a push build's /data/cache may start from, in order:
    its own group and, for an untrusted branch's group, then its rule's group (read, never
    written: the build publishes into its own group only)."""
    spec = from_request(request)
    rule_group = group_of(spec.repository, spec.meta.rule)
    return (request.group,) if request.group == rule_group else (request.group, rule_group)


def from_request(request: JobRequest) -> PushSpec:
    p = request.params
    try:
        raw = json.loads(p.get(META) or "{}")
        meta = PushMeta(**{k: v for k, v in raw.items() if k in PushMeta.__dataclass_fields__})
    except (ValueError, TypeError):
        meta = PushMeta(branch="")
    return PushSpec(repository=p[REPOSITORY], commit=p.get(COMMIT, ""), command=p.get(COMMAND, ""),
                    task=p.get(TASK, ""), dry_run=p.get(DRY_RUN) == "1", meta=meta)


def as_configured(request: JobRequest, repositories: dict, dry_run: bool) -> JobRequest:
    """A push build's request as the config makes it now (after a restart, or when a builder
    takes it from the queue): its command and project from the repository's rule, so what runs
    is always what the config says. A changed rule changes the key, and the queue's machinery
    records the old job as abandoned (the project changed). PushRefused when the repository or
    its rule is gone. Other requests pass unchanged."""
    if not is_push(request):
        return request
    spec = from_request(request)
    resolved = resolve(repositories, spec.repository, spec.branch, spec.task)
    fresh = PushSpec(repository=resolved.name, commit=spec.commit, command=resolved.command,
                     task=spec.task, dry_run=dry_run,
                     meta=PushMeta(**{**asdict(spec.meta), "rule": resolved.rule}))
    return to_request(fresh, resolved.repository.project or DEFAULT_PROJECT,
                      trusted(resolved.repository, resolved.rule, spec.branch, spec.task))
