"""Which configured repository and branch rule a push builds: pure, so tested without a server.

A rule is a branch prefix (`staging` builds `staging/my-feature` too) or `branch/task` (a task
build: target `master` with task `docs` runs the `master/docs` command). The longest rule that
matches wins; two rules of the same length that both match, or none, refuse the push (422).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Repository
from .errors import PushRefused


@dataclass(frozen=True)
class Resolved:
    name: str  # the repository's configured name ("example-org/example-repo")
    repository: Repository
    rule: str  # the matching branch rule ("staging", "master/docs")
    command: str


def find_repository(repositories: dict[str, Repository], name: str) -> tuple[str, Repository]:
    """The configured repository called `name`. Forges treat names case-insensitively, so an
    exact match wins, else the one that differs only in case; two such are ambiguous."""
    if name in repositories:
        return name, repositories[name]
    matches = [n for n in repositories if n.lower() == name.lower()]
    if not matches:
        raise PushRefused("Unknown project")
    if len(matches) > 1:
        raise PushRefused(f"Configuration for {name} is ambiguous")
    return matches[0], repositories[matches[0]]


def resolve(repositories: dict[str, Repository], name: str, branch: str,
            task: str = "") -> Resolved:
    """The repository, rule and command a push of `branch` (and `task`) builds; PushRefused
    with Mixmaster's message when none or more than one fits."""
    found, repository = find_repository(repositories, name)
    rule = best_rule(list(repository.branches), branch, task, found)
    return Resolved(found, repository, rule, repository.branches[rule])


def best_rule(rules: list[str], branch: str, task: str = "", repository: str = "") -> str:
    if task:
        suffix = "/" + task
        candidates = [r for r in rules if r.endswith(suffix) and branch.startswith(r[:-len(suffix)])
                      and r[:-len(suffix)]]
        missing = f"Not set up for {task} task."
    else:
        candidates = [r for r in rules if branch.startswith(r)]
        missing = f"Not set up to build {branch}"
    if not candidates:
        raise PushRefused(missing)
    longest = max(len(r) for r in candidates)
    best = [r for r in candidates if len(r) == longest]
    if len(best) > 1:
        raise PushRefused(f"Configuration for {repository} is ambiguous")
    return best[0]
