"""Forge commit statuses of push builds (docs/push.md, "Commit statuses"): pending when a build
starts, then success, failure or error (GitLab: canceled), linked to the build's page, through
each forge's documented status API with the repository's `status_token`:

- Gitea  `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: token ...`
- GitHub `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, `Authorization: Bearer ...`
- GitLab `POST {api}/projects/{url-encoded path}/statuses/{sha}`, `PRIVATE-TOKEN: ...`

The token is only ever sent to an API named by the config: the repository's `status_api`, or one
made from the host of its configured `url`; never to a host a payload names."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import requests

from ..config import Repository
from ..errors import ConfigError
from ..store import Status
from .notify import DeliveryFailed

FORGES = ("gitea", "github", "gitlab")
CONTEXT = "mistryd"  # the status's name on the forge (`/task` added for a task build)
PENDING = "pending"
# a build's end -> each forge's state (timed out and cancelled: what each forge has for them)
STATES = {
    "gitea": {Status.SUCCEEDED: "success", Status.FAILED: "failure", Status.TIMED_OUT: "error",
              Status.CANCELLED: "error", Status.SUPERSEDED: "error"},
    "github": {Status.SUCCEEDED: "success", Status.FAILED: "failure", Status.TIMED_OUT: "error",
               Status.CANCELLED: "error", Status.SUPERSEDED: "error"},
    "gitlab": {Status.SUCCEEDED: "success", Status.FAILED: "failed", Status.TIMED_OUT: "failed",
               Status.CANCELLED: "canceled", Status.SUPERSEDED: "canceled"},
}
TIMEOUT = 10  # seconds per call


def forge_of_api(api: str) -> str | None:
    """The forge an API base belongs to, told by its documented path: `/api/v1` Gitea,
    `api.github.com` or `/api/v3` GitHub (Enterprise), `/api/v4` GitLab."""
    parts = urlsplit(api)
    path = parts.path.rstrip("/")
    if parts.hostname == "api.github.com" or path.endswith("/api/v3"):
        return "github"
    if path.endswith("/api/v1"):
        return "gitea"
    if path.endswith("/api/v4"):
        return "gitlab"
    return None


def _host_of(git_url: str) -> str | None:
    """The host (and port of an http(s) URL) of a configured git URL, as `scheme://host`."""
    if "://" not in git_url:  # git@host:org/repo.git
        match = re.match(r"[^@/]+@([^:/]+):", git_url)
        return f"https://{match.group(1)}" if match else None
    parts = urlsplit(git_url)
    if not parts.hostname:
        return None
    if parts.scheme in ("http", "https"):
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"
    return f"https://{parts.hostname}"  # git://, ssh://: the forge's web is https on the host


def api_of(forge: str, git_url: str) -> str | None:
    """A forge's API base on the host of the repository's configured URL."""
    web = _host_of(git_url)
    if web is None:
        return None
    if forge == "github":
        return "https://api.github.com" if urlsplit(web).hostname == "github.com" else f"{web}/api/v3"
    return f"{web}/api/v1" if forge == "gitea" else f"{web}/api/v4"


def check(key: str, repository: Repository) -> None:
    """ConfigError when a repository with a `status_token` has no API its statuses could go to."""
    if not repository.status_token:
        return
    if repository.status_api:
        if not re.match(r"https?://[^/]", repository.status_api):
            raise ConfigError(f"{key}.status_api", "must be an http(s) URL")
        if forge_of_api(repository.status_api) is None:
            raise ConfigError(f"{key}.status_api", "is not a forge API base like "
                              "\"https://git.example.com/api/v1\" (Gitea), \"https://api.github.com\" "
                              "or \".../api/v3\" (GitHub), \"https://gitlab.example.com/api/v4\" (GitLab)")
    elif not repository.url or _host_of(repository.url) is None:
        raise ConfigError(f"{key}.status_token", "needs `url` (its host is the forge's) or "
                          "`status_api` (the forge's API base): a token is never sent to a host a "
                          "payload names")


@dataclass(frozen=True)
class StatusTarget:
    """Where a repository's commit statuses go and how they are proven."""

    forge: str
    api: str
    repository: str  # the forge's full name, `org/repo`
    token: str = field(repr=False)

    @classmethod
    def of(cls, name: str, repository: Repository, trigger: str) -> StatusTarget | None:
        """None when the repository has no `status_token`, or when the forge is unknown: no
        `status_api`, and a push through `POST /` to a host that is not github.com or gitlab.com."""
        if not repository.status_token:
            return None
        forge: str | None
        api: str | None
        if repository.status_api:
            forge, api = forge_of_api(repository.status_api), repository.status_api.rstrip("/")
        else:  # the forge whose endpoint the push came through, on the host of `url`
            endpoint = trigger.removeprefix("POST /")
            forge = endpoint if endpoint in FORGES else _forge_of_host(repository.url or "")
            api = api_of(forge, repository.url or "") if forge else None
        if forge is None or api is None:
            return None
        return cls(forge=forge, api=api, repository=name, token=repository.status_token)

    def call(self, commit: str, state: str, target_url: str, description: str,
             context: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """(URL, headers, JSON body) of the forge's create-status call."""
        body = {"state": state, "target_url": target_url, "description": description[:140]}
        if self.forge == "gitlab":
            url = f"{self.api}/projects/{quote(self.repository, safe='')}/statuses/{commit}"
            return url, {"PRIVATE-TOKEN": self.token}, {**body, "name": context}
        url = f"{self.api}/repos/{self.repository}/statuses/{commit}"
        if self.forge == "github":
            headers = {"Authorization": f"Bearer {self.token}",
                       "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        else:
            headers = {"Authorization": f"token {self.token}"}
        return url, headers, {**body, "context": context}

    def state(self, status: str | None) -> str:
        """The forge's state for a build's end (None: it starts)."""
        if status is None:
            return PENDING
        try:
            return STATES[self.forge].get(Status(status), STATES[self.forge][Status.FAILED])
        except ValueError:
            return STATES[self.forge][Status.FAILED]

    def attempt(self, commit: str, status: str | None, target_url: str, description: str,
                task: str = ""):
        """One call of the status API, for the Delivery: DeliveryFailed when it was not taken
        (final for a refusal other than a rate limit: the same call would be refused again)."""
        url, headers, body = self.call(commit, self.state(status), target_url, description,
                                       f"{CONTEXT}/{task}" if task else CONTEXT)

        def send() -> None:
            try:
                response = requests.post(url, json=body, headers=headers, timeout=TIMEOUT,
                                         allow_redirects=False)  # the token stays with the API
            except requests.RequestException as e:
                raise DeliveryFailed(f"{type(e).__name__}: {e}") from None
            if response.status_code >= 300:
                final = 400 <= response.status_code < 500 and response.status_code != 429
                raise DeliveryFailed(f"HTTP {response.status_code}: {response.text[:200]}", final)
        return send


def _forge_of_host(git_url: str) -> str | None:
    host = urlsplit(_host_of(git_url) or "").hostname
    return {"github.com": "github", "gitlab.com": "gitlab"}.get(host or "")
