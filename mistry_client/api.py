"""A small Python API for mistryd (HTTP from mistry_client.wire); the `mistry` command is built on it.

    from mistry_client import Client
    info = Client("127.0.0.1", 8462).build("hello", params={"ref": "main"})
    Client("127.0.0.1", 8462).fetch(info, "out/")

A server with access control wants a token: `Client(..., token="...")` sends it as
`Authorization: Bearer <token>` on every request (jobs, log streams, artifacts).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable

from .address import parse_address
from .deadline import after, cap, earliest, interrupt_at, passed
from .durations import format_duration
from .errors import (
    BROKEN,
    NOT_HTTP,
    AccessDenied,
    BuildTimeout,
    ClientError,
    NotMistryd,
    ServerError,
    Unreachable,
    connection_problem,
)
from .log_tail import LogTail
from .sse import events
from .wire import Response, Session, WireError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .ui import Fetched

FINISHED = {"succeeded", "failed", "timed-out", "cancelled", "abandoned"}
HEARTBEAT_GRACE = 45.0  # the server sends a keep-alive every 15 s; silence this long = dead link
CHECK_ADDRESS = "check --host and --port"


class Submitted:
    """The server's answer to a submit: the build's id and page, whether it is cached, a cache
    hit's record (without the log) from servers that send it, and whether an identical build was
    in flight already (servers that say so)."""

    __slots__ = ("id", "url", "cached", "info", "joined")

    def __init__(self, id: str, url: str, cached: bool, info: dict | None = None,
                 joined: bool = False):
        self.id, self.url, self.cached, self.info, self.joined = id, url, cached, info, joined


class Client:
    """`host` is a host name or address, `host:port` or an http(s) URL; a port or scheme in it
    wins over `port` and `scheme`. ValueError when it is none of these."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8462, scheme: str = "http",
                 connect_timeout: float = 10.0, token: str | None = None):
        self.address = parse_address(host, port, scheme)
        self.host = self.address.host
        self.port = self.address.port
        self.base = self.address.base
        self.session = Session(self.base)
        self.connect_timeout = connect_timeout
        self.has_token = bool(token)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # --- plumbing -------------------------------------------------------------------------------

    def reconnect(self) -> None:
        """Use a new connection from now on (after a fork), leaving the old one alone."""
        self.session = self.session.fresh()

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def request(self, method: str, path: str, read_timeout: float = 60.0,
                deadline: float | None = None, **kw: Any) -> Response:
        """One request; every failure is a ClientError with a one-line message. Under a
        `deadline` (a time.monotonic() value) it waits no longer than that: BuildTimeout."""
        timeouts = (cap(self.connect_timeout, deadline), cap(read_timeout, deadline))
        try:
            r = self.session.request(method, path.lstrip("/"), timeouts, **kw)
        except WireError as e:
            if passed(deadline):
                raise BuildTimeout(f"no answer from mistryd at {self.base} before the deadline") \
                    from None
            raise self._failure(e, *timeouts) from None
        if r.status_code >= 400:
            error = _error_text(r)
            if error is None:
                raise NotMistryd(self._not_mistryd(r, "instead of mistryd's JSON error"))
            if r.status_code in (401, 403):
                raise AccessDenied(r.status_code, error, self.base, self.has_token)
            raise ServerError(r.status_code, error, _retry_after(r))
        return r

    def _failure(self, e: WireError, connect: float, read: float) -> ClientError:
        if e.timeout and e.phase == "connect":
            return Unreachable(f"cannot reach mistryd at {self.base}: no answer within "
                               f"{format_duration(connect)} ({CHECK_ADDRESS})")
        if e.timeout:
            return Unreachable(f"mistryd at {self.base} did not answer within "
                               f"{format_duration(read)}")
        problem = connection_problem(e)
        if problem == BROKEN:
            return Unreachable(f"the connection to mistryd at {self.base} broke before the "
                               "answer was complete")
        if problem == NOT_HTTP:
            return NotMistryd(f"no mistryd at {self.base}: {problem} ({CHECK_ADDRESS})")
        return Unreachable(f"cannot reach mistryd at {self.base}: {problem} ({CHECK_ADDRESS})")

    def _not_mistryd(self, r: Response, what: str) -> str:
        kind = (r.headers.get("Content-Type") or "").split(";")[0].strip() or "no content type"
        return (f"no mistryd at {self.base}: {r.method} {r.path} got "
                f'"{r.status_code} {r.reason}" ({kind}) {what} ({CHECK_ADDRESS})')

    def _json(self, r: Response, *keys: str) -> dict:
        """The answer's JSON object, which must have `keys`; NotMistryd when it is not one."""
        try:
            body = r.json()
        except ValueError:
            body = None
        except WireError as e:
            raise self._failure(e, self.connect_timeout, 60.0) from None
        if not isinstance(body, dict) or any(k not in body for k in keys):
            raise NotMistryd(self._not_mistryd(r, "instead of mistryd's JSON"))
        return body

    # --- jobs -----------------------------------------------------------------------------------

    def submit(self, project: str, params: dict[str, str] | None = None, group: str = "",
               rebuild: bool = False, deadline: float | None = None) -> Submitted:
        """Schedule a build (`POST /jobs?async`); returns at once."""
        body = {"project": project, "params": params or {}, "group": group, "rebuild": rebuild}
        raw = self._json(self.request("POST", "jobs?async", json=body, deadline=deadline),
                         "id", "url")
        return Submitted(id=raw["id"], url=raw["url"], cached=bool(raw.get("cached")),
                         info=finished_info(raw) if raw.get("cached") else None,
                         joined=bool(raw.get("joined")))

    def explain(self, project: str, params: dict[str, str] | None = None, group: str = "",
                deadline: float | None = None) -> dict:
        """`GET /jobs/explain` with the body of a submit: the key, whether it is cached, queued
        or running, and what differs from the nearest cached build."""
        body = {"project": project, "params": params or {}, "group": group}
        return self._json(self.request("GET", "jobs/explain", json=body, deadline=deadline),
                          "ID", "State")

    def verify(self, project: str, params: dict[str, str] | None = None, group: str = "",
               image_cache: bool = True, deadline: float | None = None) -> dict:
        """`POST /jobs/verify`: build the cached build that answers the request again and
        compare the artifacts; waits for the answer (until `deadline`)."""
        body = {"project": project, "params": params or {}, "group": group}
        path = "jobs/verify" if image_cache else "jobs/verify?no-image-cache"
        read_timeout = 3600.0 if deadline is None else max(1.0, deadline - time.monotonic())
        return self._json(self.request("POST", path, json=body, read_timeout=read_timeout,
                                       deadline=deadline), "ID", "Reproducible")

    def submit_batch(self, jobs: object) -> dict:
        """`POST /batches` (docs/batches.md): builds in dependency order; answers at once with
        {id, url, jobs: {name: {id, url}}}."""
        return self._json(self.request("POST", "batches", json={"jobs": jobs}), "id", "jobs")

    def batch(self, batch_id: str) -> dict:
        """`GET /batches/<id>` as JSON: the batch's status and each job's."""
        r = self.request("GET", f"batches/{batch_id}", headers={"Accept": "application/json"})
        return self._json(r, "status", "jobs")

    def job(self, project: str, build_id: str, deadline: float | None = None) -> dict:
        """`GET /job/<project>/<id>` as JSON: {ID, Project, State, Status, BuildInfo}."""
        r = self.request("GET", f"job/{project}/{build_id}", deadline=deadline,
                         headers={"Accept": "application/json"})
        return self._json(r, "State", "Status")

    def index(self, limit: int | None = None, project: str = "", status: str = "",
              id_prefix: str = "", read_timeout: float = 60.0) -> list[dict]:
        """`GET /index/`: builds, newest first, as {id, project, startedAt, buildInfo, state,
        status}. The filters are sent and applied here too, so a server that ignores them (an
        older mistryd, upstream) still gives the right answer, only a longer one."""
        query = {k: v for k, v in (("project", project), ("status", status), ("id", id_prefix))
                 if v}
        if limit is not None:
            query["limit"] = str(limit)
        from urllib.parse import urlencode

        r = self.request("GET", f"index/?{urlencode(query)}" if query else "index/",
                         read_timeout)
        try:
            rows = r.json()
        except (ValueError, WireError):
            rows = None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise NotMistryd(self._not_mistryd(r, "instead of mistryd's index"))
        kept = [row for row in rows
                if str(row.get("id", "")).startswith(id_prefix)
                and (not project or row.get("project") == project)
                and (not status or row.get("status") == status)]
        return kept if limit is None else kept[:limit]

    def projects(self, read_timeout: float = 60.0) -> list[str]:
        """`GET /projects`: the names of the projects the server builds."""
        names = self._json(self.request("GET", "projects", read_timeout),
                           "projects")["projects"]
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def with_own_connection(self) -> Client:
        """A copy of this client on a connection of its own (for another thread)."""
        twin = copy.copy(self)
        twin.reconnect()
        return twin

    def cancel(self, project: str, build_id: str) -> dict:
        """Cancel a queued or running build; the BuildInfo of its end (Status "cancelled")."""
        return self._json(self.request("POST", f"jobs/{project}/{build_id}/cancel",
                                       read_timeout=120))

    def follow_log(self, project: str, build_id: str, on_line: Callable[[str], None] | None = None,
                   deadline: float | None = None, offset: int = 0) -> dict:
        """Stream the build's log from `offset` until it ends, calling `on_line` per line. A dropped
        connection resumes where it stopped (Last-Event-ID), so no line is lost or repeated.
        Returns the end event's data: {"status", "exit_code"} and, from servers that send it,
        "info" (the BuildInfo without the log). BuildTimeout at `deadline` (a time.monotonic()
        value), however much the build prints."""
        failures = 0
        while True:
            if passed(deadline):
                raise BuildTimeout(f"{project}/{build_id} did not finish in time")
            try:
                with self.request("GET", f"log/{project}/{build_id}", HEARTBEAT_GRACE, deadline,
                                  headers={"Accept": "text/event-stream",
                                                        "Last-Event-ID": str(offset)}) as r, \
                        interrupt_at(deadline, r):
                    if not r.headers.get("Content-Type", "").startswith("text/event-stream"):
                        raise NotMistryd(self._not_mistryd(r, "instead of mistryd's log stream"))
                    for event in events(r.iter_content(chunk_size=None)):
                        failures = 0
                        if event.event == "end":
                            return _json_or_empty(event.data)
                        if event.id is not None and event.id.isdigit():
                            offset = int(event.id)
                        if on_line is not None:
                            on_line(event.data)
                        if passed(deadline):
                            break
                problem = "the stream ended before the build did"
            except Unreachable as e:
                problem = e.message
            except WireError as e:
                problem = connection_problem(e)
            except ServerError as e:
                if e.retry_after is None:
                    raise
                # busy (every thread it keeps for followers is taken): wait as told, until the
                # deadline, without counting it as a lost connection
                time.sleep(cap(e.retry_after, deadline))
                continue
            if passed(deadline):
                raise BuildTimeout(f"{project}/{build_id} did not finish in time")
            failures += 1
            if failures > 8:
                raise Unreachable(f"lost the log stream of {project}/{build_id} from mistryd at "
                                  f"{self.base}: {problem}")
            time.sleep(cap(min(0.05 * 2 ** failures, 2.0), deadline))  # backoff, then resume

    def wait(self, project: str, build_id: str, timeout: float | None = None,
             on_line: Callable[[str], None] | None = None, deadline: float | None = None) -> dict:
        """Wait for the build to finish; its BuildInfo (with the log followed as
        `ContainerStdouterr`). BuildTimeout after `timeout` seconds or at `deadline` (a
        time.monotonic() value), whichever comes first."""
        deadline = earliest(deadline, after(timeout))
        tail = LogTail(self.url(f"job/{project}/{build_id}/out.log"))

        def keep(line: str) -> None:
            tail.add(line)
            if on_line is not None:
                on_line(line)

        try:
            end = self.follow_log(project, build_id, keep, deadline)
        except BuildTimeout:
            raise BuildTimeout(f"{project}/{build_id} did not finish in time") from None
        except ServerError as e:
            if e.status != 404:
                raise
            end = {}  # finished but never logged (e.g. abandoned): its record says how it ended
        info = finished_info(end)
        if info is not None:
            info["ContainerStdouterr"] = tail.text()
            return info
        return self._finished_record(project, build_id, deadline)

    def _finished_record(self, project: str, build_id: str, deadline: float | None) -> dict:
        """The record of a build whose log has ended, from a server whose `end` event does not
        carry it: one GET (such a server writes the record before it ends the log)."""
        try:
            view = self.job(project, build_id, deadline)
        except BuildTimeout:
            raise BuildTimeout(f"{project}/{build_id} did not finish in time") from None
        info = view.get("BuildInfo")
        if isinstance(info, dict) and view["Status"] in FINISHED and info.get("Status") in FINISHED:
            return info
        raise ClientError(f"mistryd at {self.base} ended the log of {project}/{build_id}, but "
                          f"its record says {view['Status']!r}; ask again with "
                          f"`mistry status {project} {build_id}`")

    def build(self, project: str, params: dict[str, str] | None = None, group: str = "",
              rebuild: bool = False, timeout: float | None = None,
              on_line: Callable[[str], None] | None = None) -> dict:
        """Submit and wait: the finished build's BuildInfo (check its ExitCode). `timeout`
        bounds both, from the call on."""
        deadline = after(timeout)
        try:
            job = self.submit(project, params, group, rebuild, deadline)
        except BuildTimeout:
            raise BuildTimeout(f"the build of {project} did not finish in time") from None
        info = self.wait(project, job.id, on_line=on_line, deadline=deadline)
        if job.cached:  # the stored record says how it was built, not how it was answered
            info["Cached"] = True
        return info

    # --- artifacts ------------------------------------------------------------------------------

    def manifest(self, project: str, build_id: str, unless: str | None = None,
                 busy_retries: int = 15, form: str = "entries") -> tuple[dict | None, str | None]:
        """The build's artifact manifest and its ETag; (None, `unless`) when the manifest is
        still the one whose ETag is `unless` (304). A server computing too many at once answers
        503 with Retry-After: that is waited out, `busy_retries` times at most. `form="columns"`
        asks for it in columns (manifest.Manifest reads either: a server from before columns
        sends entries)."""
        headers = {"If-None-Match": unless} if unless else None
        query = "" if form == "entries" else f"?form={form}"
        for attempt in range(busy_retries + 1):
            try:
                r = self.request("GET", f"artifacts/{project}/{build_id}/{query}", headers=headers)
                if r.status_code == 304:
                    r.close()
                    return None, unless
                return self._json(r, *(("entries",) if form == "entries" else ())), \
                    r.headers.get("ETag")
            except ServerError as e:
                if e.status != 503 or e.retry_after is None or attempt == busy_retries:
                    raise
                time.sleep(e.retry_after)
        raise AssertionError("unreachable")

    def fetch(self, info: dict, target: str, clear_target: bool = False,
              progress: bool = False) -> Fetched:
        """Download a finished build's artifacts into `target`, verified (HTTP transport); what
        was fetched (files, bytes, files the target already held)."""
        from .transports import HttpTransport

        return HttpTransport(self, progress=progress).fetch(info, target, clear_target)


def finished_info(end: dict) -> dict | None:
    """The BuildInfo an `end` event carries ({"status", "exit_code", "info"}), without the log;
    None when it carries none (an older server, or a build whose record is gone)."""
    info = end.get("info")
    if isinstance(info, dict) and info.get("Status") in FINISHED:
        return {k: v for k, v in info.items() if k != "ContainerStdouterr"}
    return None


def _error_text(r: Response) -> str | None:
    """mistryd's `{"error": ...}`; None when the answer is not one."""
    try:
        body = r.json()
    except (ValueError, WireError):
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return None


def _json_or_empty(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _retry_after(r: Response) -> float | None:
    """A 503's Retry-After in seconds (mistryd sends whole seconds), capped at a minute."""
    value = r.headers.get("Retry-After", "") if r.status_code == 503 else ""
    return min(float(value), 60.0) if value.isdigit() else None
