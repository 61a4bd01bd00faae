"""Which configured repository and branch rule a push builds: pure, so tested without a server.

A rule is a branch prefix (`staging` builds `staging/my-feature` too) or `branch/task` (a task
build: target `master` with task `docs` runs the `master/docs` command). The longest rule that
matches wins; two rules of the same length that both match, or none, refuse the push (422).

A rule's group cache is a trust boundary: only its trusted branches write it (`trusted`); a push
of any other branch the rule matches builds in a group of its own (docs/push.md, "Trusted
branches").
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

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


def trusted(repository: Repository, rule: str, branch: str, task: str = "") -> bool:
    """Whether a push of `branch` may write the group cache of its `rule`: `branch` matches one
    of the repository's `trusted_branches` (globs), or, without that key, it is the rule's own
    branch (`staging` for the rule `staging`, `master` for the task rule `master/docs`), never a
    longer one the prefix rule also matches (`staging/my-feature`)."""
    if repository.trusted_branches is not None:
        return any(fnmatchcase(branch, glob) for glob in repository.trusted_branches)
    own = rule[:-len(task) - 1] if task and rule.endswith("/" + task) else rule
    return branch == own
