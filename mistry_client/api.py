"""A small Python API for mistryd, on `requests`; the `mistry` command is built on it.

    from mistry_client import Client
    info = Client("127.0.0.1", 8462).build("hello", params={"ref": "main"})
    Client("127.0.0.1", 8462).fetch(info, "out/")

A server with access control wants a token: `Client(..., token="...")` sends it as
`Authorization: Bearer <token>` on every request (jobs, log streams, artifacts).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from .errors import AccessDenied, BuildTimeout, ServerError, Unreachable
from .sse import events

FINISHED = {"succeeded", "failed", "timed-out", "cancelled", "abandoned"}
HEARTBEAT_GRACE = 45.0  # the server sends a keep-alive every 15 s; silence this long = dead link


@dataclass
class Submitted:
    id: str
    url: str
    cached: bool


class Client:
    def __init__(self, host: str = "127.0.0.1", port: int = 8462, scheme: str = "http",
                 session: requests.Session | None = None, connect_timeout: float = 10.0,
                 token: str | None = None):
        self.host = host
        self.port = port
        self.base = f"{scheme}://{host}:{port}"
        self.session = session or requests.Session()
        self.connect_timeout = connect_timeout
        self.has_token = bool(token)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # --- plumbing -------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def request(self, method: str, path: str, read_timeout: float | None = 60.0,
                **kw: Any) -> requests.Response:
        try:
            r = self.session.request(method, self.url(path),
                                     timeout=(self.connect_timeout, read_timeout), **kw)
        except requests.ConnectionError as e:
            raise Unreachable(f"cannot reach mistryd at {self.base} ({_reason(e)})") from None
        except requests.Timeout:
            raise Unreachable(f"mistryd at {self.base} did not answer in time") from None
        if r.status_code in (401, 403):
            raise AccessDenied(r.status_code, _error_text(r), self.base, self.has_token)
        if r.status_code >= 400:
            raise ServerError(r.status_code, _error_text(r))
        return r

    # --- jobs -----------------------------------------------------------------------------------

    def submit(self, project: str, params: dict[str, str] | None = None, group: str = "",
               rebuild: bool = False) -> Submitted:
        """Schedule a build (`POST /jobs?async`); returns at once."""
        body = {"project": project, "params": params or {}, "group": group, "rebuild": rebuild}
        r = self.request("POST", "jobs?async", json=body)
        raw = r.json()
        return Submitted(id=raw["id"], url=raw["url"], cached=bool(raw.get("cached")))

    def job(self, project: str, build_id: str) -> dict:
        """`GET /job/<project>/<id>` as JSON: {ID, Project, State, Status, BuildInfo}."""
        r = self.request("GET", f"job/{project}/{build_id}",
                         headers={"Accept": "application/json"})
        return r.json()

    def cancel(self, project: str, build_id: str) -> dict:
        """Cancel a queued or running build; the BuildInfo of its end (Status "cancelled")."""
        return self.request("POST", f"jobs/{project}/{build_id}/cancel", read_timeout=120).json()

    def follow_log(self, project: str, build_id: str, on_line: Callable[[str], None] | None = None,
                   deadline: float | None = None, offset: int = 0) -> dict:
        """Stream the build's log from `offset` until it ends, calling `on_line` per line. A dropped
        connection resumes where it stopped (Last-Event-ID), so no line is lost or repeated.
        Returns the end event's payload ({"status", "exit_code"}). BuildTimeout at `deadline`
        (a time.monotonic() value)."""
        failures = 0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BuildTimeout("deadline")
            read_timeout = HEARTBEAT_GRACE if remaining is None else min(HEARTBEAT_GRACE,
                                                                          remaining)
            try:
                with self.request("GET", f"log/{project}/{build_id}", read_timeout=read_timeout,
                                  stream=True, headers={"Accept": "text/event-stream",
                                                        "Last-Event-ID": str(offset)}) as r:
                    for event in events(r.iter_content(chunk_size=None)):
                        failures = 0
                        if event.event == "end":
                            return _json_or_empty(event.data)
                        if event.id is not None and event.id.isdigit():
                            offset = int(event.id)
                        if on_line is not None:
                            on_line(event.data)
            except (Unreachable, requests.RequestException):
                pass
            # the stream ended without an end event (connection cut): resume from `offset`
            failures += 1
            if failures > 8:
                raise Unreachable(f"lost the log stream of {project}/{build_id} "
                                  f"from {self.base}")
            time.sleep(min(0.05 * 2 ** failures, 2.0))  # backoff before reconnecting

    def wait(self, project: str, build_id: str, timeout: float | None = None,
             on_line: Callable[[str], None] | None = None) -> dict:
        """Wait for the build to finish; its BuildInfo. BuildTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self.follow_log(project, build_id, on_line, deadline)
        except BuildTimeout:
            raise BuildTimeout(f"{project}/{build_id} did not finish in time") from None
        except ServerError as e:
            if e.status != 404:  # 404: finished but never logged (e.g. abandoned): ask the job
                raise
        delay = 0.02
        while True:
            view = self.job(project, build_id)
            info = view.get("BuildInfo")
            if info and view.get("Status") in FINISHED and info.get("Status") in FINISHED:
                return info
            if deadline is not None and time.monotonic() + delay > deadline:
                raise BuildTimeout(f"{project}/{build_id} did not finish in time")
            time.sleep(delay)  # the record lands a moment after the log's end event
            delay = min(delay * 2, 1.0)

    def build(self, project: str, params: dict[str, str] | None = None, group: str = "",
              rebuild: bool = False, timeout: float | None = None,
              on_line: Callable[[str], None] | None = None) -> dict:
        """Submit and wait: the finished build's BuildInfo (check its ExitCode)."""
        job = self.submit(project, params, group, rebuild)
        info = self.wait(project, job.id, timeout, on_line)
        if job.cached:  # the stored record says how it was built, not how it was answered
            info["Cached"] = True
        return info

    # --- artifacts ------------------------------------------------------------------------------

    def manifest(self, project: str, build_id: str) -> dict:
        return self.request("GET", f"artifacts/{project}/{build_id}/").json()

    def fetch(self, info: dict, target: str, clear_target: bool = False,
              progress: bool = False) -> None:
        """Download a finished build's artifacts into `target`, verified (HTTP transport)."""
        from .transports import HttpTransport

        HttpTransport(self, progress=progress).fetch(info, target, clear_target)


def _reason(e: Exception) -> str:
    text = str(e)
    for marker in ("Connection refused", "Name or service not known", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(e).__name__


def _error_text(r: requests.Response) -> str:
    try:
        body = r.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    return (r.text or r.reason or "").strip()


def _json_or_empty(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
