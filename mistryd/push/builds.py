"""The server's side of push builds: from a webhook's Push to a JobRequest (rule, pinned URL,
resolved commit), a queued request back to what the config says now, the default project, and
the hooks a builder runs for a push build."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..config import Config, Repository, git_url_problem
from ..errors import MistryError
from ..jobs import JobRequest
from ..layout import Layout
from ..store import Status
from .errors import PushRefused, RepositoryUnreachable
from .git import GitEnv, GitFailed, ls_remote, ssh_command
from .jobspec import (
    DEFAULT_PROJECT,
    DEFAULT_PROJECT_FOLDER,
    PushMeta,
    PushSpec,
    as_configured,
    from_request,
    is_push,
    seed_groups,
    to_request,
)
from .notify import Count
from .payloads import Push
from .reports import Reports
from .rules import find_repository, resolve, trusted
from .run import PushRun


class PushBuilds:
    def __init__(self, config: Config, layout: Layout, count: Count = lambda kind, outcome: None):
        Reports.check(config)
        self.config = config
        self.reports = Reports(config, count)  # notifications and commit statuses
        self.repositories: dict[str, Repository] = dict(config.repositories)
        self.dry_run = config.dry_run
        self.state = layout.state_dir() / "push"
        self.known_hosts = self.state / "known_hosts"

    # --- at the webhook ---------------------------------------------------------------------

    def repository(self, name: str) -> tuple[str, Repository]:
        return find_repository(self.repositories, name)

    def request_for(self, push: Push, page: str = "") -> JobRequest:
        """The JobRequest a push builds; PushRefused (422) or RepositoryUnreachable (502)."""
        resolved = resolve(self.repositories, push.repository, push.branch, push.task)
        url = self.fetch_url(resolved.name, resolved.repository, push)
        commit = push.commit or self.head(url, push.branch)
        meta = PushMeta(branch=push.branch, rule=resolved.rule,
                        url="" if resolved.repository.url else url, view_url=push.view_url,
                        message=push.message, trigger=push.trigger, notify=push.notify, page=page)
        spec = PushSpec(repository=resolved.name, commit=commit, command=resolved.command,
                        task=push.task, dry_run=self.dry_run, meta=meta)
        return to_request(spec, resolved.repository.project or DEFAULT_PROJECT,
                          trusted(resolved.repository, resolved.rule, push.branch, push.task))

    @staticmethod
    def fetch_url(name: str, repository: Repository, push: Push) -> str:
        """The configured `url` is the only one ever fetched: a lightweight payload naming
        another is refused. Without one, the payload's URL (as Mixmaster did)."""
        if repository.url:
            if push.trigger == "POST /" and push.url != repository.url:
                raise PushRefused(f"repositoryUrl {push.url} is not the url configured for {name}")
            return repository.url
        if not push.url:
            raise PushRefused("repositoryUrl not specified")
        if problem := git_url_problem(push.url):
            raise PushRefused(f"repositoryUrl {problem}")
        return push.url

    def head(self, url: str, branch: str) -> str:
        """The commit `branch` points at now (a push without a commit)."""
        home = Path(tempfile.mkdtemp(prefix="mistryd-ls-remote-"))
        try:
            env = GitEnv(home=home, ssh_command=ssh_command(self._known_hosts(), self.config.ssh_key))
            commit = ls_remote(url, branch, env)
        except GitFailed as e:
            raise RepositoryUnreachable(e.message) from None
        finally:
            shutil.rmtree(home, ignore_errors=True)
        if commit is None:
            raise PushRefused(f"branch {branch} does not exist in {url}")
        return commit

    def _known_hosts(self) -> Path:
        self.state.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.known_hosts

    # --- wherever a Job is made ---------------------------------------------------------------

    def as_configured(self, request: JobRequest) -> JobRequest:
        return as_configured(request, self.repositories, self.dry_run)

    def project_folder(self, request: JobRequest) -> Path | None:
        """The default push project's folder (inside the package); None for any other."""
        if request.project == DEFAULT_PROJECT and is_push(request):
            return DEFAULT_PROJECT_FOLDER
        return None

    def seed_groups(self, request: JobRequest) -> tuple[str, ...] | None:
        """The groups a push build's cache may start from (an untrusted branch's: its own, then
        its rule's); None for any other build (its own group only)."""
        return seed_groups(request) if is_push(request) else None

    def hooks(self, request: JobRequest) -> PushRun | None:
        if not is_push(request):
            return None
        spec = from_request(request)
        _, repository = self.repository(spec.repository)
        owner = (self.config.container_uid, self.config.container_gid) if os.geteuid() == 0 else None
        return PushRun(spec=spec, repository=repository, config=self.config,
                       known_hosts=self._known_hosts(), owner=owner, reports=self.reports)

    def never_ran(self, request: JobRequest, build_id: str, status: Status) -> None:
        """A push build that ended before any builder ran it (cancelled while queued, or
        refused when the queue was taken up again): its events and status all the same."""
        if not is_push(request):
            return
        spec = from_request(request)
        repository: Repository | None = None
        try:
            _, repository = self.repository(spec.repository)
        except MistryError:  # no longer configured: only the global `notify` hears of it
            pass
        self.reports.for_build(spec, repository, request.project, build_id).never_ran(status)
