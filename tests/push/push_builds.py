"""What every push test waits for: an accepted push's build to end."""

from __future__ import annotations

import requests
from support import wait_for

# the first build of the default push project's image installs packages
FIRST_BUILD_SECONDS = 600


def finished(answer: dict, state: str = "ready", timeout: float = FIRST_BUILD_SECONDS) -> dict:
    """The build's `GET /job` view ({ID, Project, State, Status, BuildInfo}) once it is in
    `state`; `answer` is the webhook's 202 answer (its `url` is the build page)."""
    view: dict = {}

    def reached() -> bool:
        view.clear()
        view.update(requests.get(answer["url"], headers={"Accept": "application/json"},
                                 timeout=30).json())
        return view["State"] == state

    wait_for(reached, timeout=timeout)
    return view
