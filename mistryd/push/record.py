"""What a push build's page shows besides its key: repository, branch, commit (linked to the
view URL), task, trigger and message. While the job may run they travel in its request (the
opaque `_push` param, mistryd/push/jobspec.py); the opaque params are dropped when it ends, so
the builder writes them beside build_info.json as `push.json` (a file of the server's: the
container sees only data/). The payload's URL is left out: it may carry credentials."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..jobs import JobRequest
from .jobspec import PushSpec, from_request, is_push

FILE = "push.json"
_MAX_BYTES = 64 << 10
_SAFE_LINK = ("http://", "https://")  # a view URL is a link on the page: never javascript: etc.


@dataclass(frozen=True)
class PushFacts:
    repository: str
    branch: str
    commit: str
    task: str = ""
    trigger: str = ""
    message: str = ""
    view_url: str = ""

    @classmethod
    def of(cls, spec: PushSpec, commit: str = "") -> PushFacts:
        return cls(repository=spec.repository, branch=spec.branch, commit=commit or spec.commit,
                   task=spec.task, trigger=spec.meta.trigger, message=spec.meta.message,
                   view_url=spec.meta.view_url)

    @property
    def view_link(self) -> str:
        """The view URL when it is one a page may link to, else ""."""
        return self.view_url if self.view_url.lower().startswith(_SAFE_LINK) else ""


def of_params(project: str, params: dict[str, str]) -> PushFacts | None:
    """The facts of a build not finished yet, from its params (opaque ones included)."""
    request = JobRequest(project=project, params=dict(params))
    return PushFacts.of(from_request(request)) if is_push(request) else None


def write(build_folder: Path, facts: PushFacts) -> None:
    (build_folder / FILE).write_text(json.dumps(asdict(facts), sort_keys=True))


def read(build_folder: Path) -> PushFacts | None:
    """The facts a finished push build left; None for any other build (or a damaged file)."""
    try:
        with open(build_folder / FILE, "rb") as f:
            raw = json.loads(f.read(_MAX_BYTES))
        return PushFacts(**{f.name: str(raw.get(f.name) or "") for f in fields(PushFacts)})
    except (OSError, ValueError, AttributeError):
        return None
