"""The JSON API, compatible with upstream mistry: jobs, index, job, log stream, metrics."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from .. import explain
from ..done import Done
from ..errors import BadRequest, NotFound, Unavailable
from ..hits import Hit
from ..jobs import BuildInfo, JobRequest
from ..logs import end_event_data, sse_stream
from ..metrics import builders_by_state
from ..names import name_problem
from ..queue import JobKey
from ..server import Server
from ..store import BuildRow, Status
from .auth import check_group, sees_host_paths
from .capacity import capacity
from .http import WHEN_CLIENT_GONE
from .logview import PageRenderer

bp = Blueprint("api", __name__)


def server() -> Server:
    return current_app.extensions["mistryd"]


@bp.post("/jobs")
def post_job():
    srv = server()
    job_request = JobRequest.from_json(_json_body())
    check_group(job_request.group)
    build_id, outcome = srv.submit(job_request)
    if "async" in request.args:
        answer: dict = {"id": build_id, "url": f"job/{job_request.project}/{build_id}",
                        "cached": isinstance(outcome, Hit),
                        "joined": not isinstance(outcome, Hit) and outcome.coalesced}
        if isinstance(outcome, Hit):  # finished already: its record, as the `end` event has it
            info = outcome.info.to_json()
            info.pop("ContainerStdouterr", None)
            answer["info"] = for_this_reader(info)
        return jsonify(answer), 201
    if isinstance(outcome, Hit):
        return Response(outcome.body, status=201, mimetype="application/json")
    try:
        give_back = capacity().waits.take()
    except Unavailable as e:  # the build goes on: the client can follow it instead of waiting
        raise Unavailable(f"{e.message}. Build {job_request.project}/{build_id} is accepted and "
                          f"goes on: follow it at /log/{job_request.project}/{build_id}, or "
                          "ask again (the same request joins it)", e.retry_after) from None
    try:
        if not _wait_while_connected(outcome.flight.done):
            return Response(status=499)  # nobody is listening; the build goes on for the others
        return jsonify(srv.with_log(srv.wait(outcome))), 201
    finally:
        give_back()


@bp.get("/jobs/explain")
def explain_job():
    """Why the same body as POST /jobs would (not) be answered from cache (docs/provenance.md):
    the body as JSON, or the request as query parameters."""
    has_body = bool(request.get_data(cache=True).strip())
    if has_body and request.args:
        raise BadRequest("send the request either as a JSON body or as query parameters, "
                         "not both")
    body = _json_body() if has_body else explain.request_from_query(request.args.items(multi=True))
    job_request = JobRequest.from_json(body)
    check_group(job_request.group)
    return jsonify(explain.explain(server(), job_request))


@bp.post("/jobs/verify")
def verify_job():
    """Build the cached build that answers the POST /jobs body again and compare the artifacts
    (mistryd/verify.py); `?async` answers at once, `?no-image-cache` builds the image afresh."""
    srv = server()
    job_request = JobRequest.from_json(_json_body())
    check_group(job_request.group)
    verification = srv.verifier.start(job_request, image_cache="no-image-cache" not in request.args)
    where = f"/jobs/verify/{job_request.project}/{verification.build_id}"
    if "async" in request.args:
        return jsonify({**verification.head(), "State": "running"}), 202
    try:
        give_back = capacity().waits.take()
    except Unavailable as e:  # the verification goes on; its outcome is recorded
        raise Unavailable(f"{e.message}. The verification goes on: ask GET {where}",
                          e.retry_after) from None
    try:
        if not _wait_while_connected(verification.done):
            return Response(status=499)  # it goes on; its verdict is recorded on the build
        return jsonify(verification.result), 200
    finally:
        give_back()


@bp.get("/jobs/verify/<project>/<build_id>")
def verification(project: str, build_id: str):
    _checked(project, build_id)
    return jsonify(server().verifier.status(project, build_id))


def _wait_while_connected(done: Done) -> bool:
    """Wait for `done`; False as soon as the client has gone away, so its thread is free again.
    Either wakes the thread when it happens: a waiter costs nothing while it waits."""
    listen_gone = request.environ.get(WHEN_CLIENT_GONE)
    if listen_gone is None:  # a server that cannot tell (Flask's test client)
        done.wait()
        return True
    woken = threading.Event()
    stop_listening = (done.listen(woken.set), listen_gone(woken.set))
    try:
        woken.wait()
        return done.is_set()
    finally:
        for stop in stop_listening:
            stop()


def _client_gone() -> Callable[[], bool] | None:
    """waitress's way to ask whether this request's client has hung up (None under a server that
    cannot tell, such as Flask's test client)."""
    return request.environ.get("waitress.client_disconnected")


def _json_body() -> object:
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise BadRequest("the request body is empty; send JSON like {\"project\": \"hello\"}")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e})") from None
    except RecursionError:
        raise BadRequest("the request body nests too deeply; a job is a flat JSON object like "
                         "{\"project\": \"hello\", \"params\": {\"k\": \"v\"}}") from None


@bp.get("/index/")
def index():
    srv = server()
    raw = request.args.get("limit", "").strip()
    # SQLite's LIMIT is a 64-bit integer: a longer number would be a 500, not an answer
    if raw and not re.fullmatch(r"-?[0-9]{1,18}", raw):
        raise BadRequest(f"limit must be a whole number (at most 18 digits), got {raw[:30]!r}; "
                         "leave it out (or negative) for every build")
    limit = int(raw) if raw else -1
    rows = _index_rows(srv, None if limit < 0 else limit)
    return jsonify([
        {"id": r.id, "project": r.project, "startedAt": (r.info or {}).get("StartedAt"),
         "buildInfo": for_this_reader(r.info), "state": r.state, "status": r.status.value}
        for r in rows
    ])


def _index_rows(srv: Server, limit: int | None) -> list[BuildRow]:
    """The index's rows, newest first, narrowed by the optional filters `project`, `status`,
    `repository` (push builds) and `id` (a prefix of build ids: how `mistry` resolves a short
    id). Upstream's index has no filters; without them the answer is upstream's."""
    a = request.args
    project, status_text = a.get("project", "").strip(), a.get("status", "").strip()
    repository = a.get("repository", "").strip()
    prefix = a.get("id", "").strip().lower()
    status = None
    if status_text:
        try:
            status = Status(status_text)
        except ValueError:
            raise BadRequest(f"unknown status {status_text[:30]!r}; one of: "
                             f"{', '.join(s.value for s in Status)}") from None
    if prefix and not re.fullmatch(r"[0-9a-f]{1,64}", prefix):
        raise BadRequest(f"id {prefix[:70]!r} is not the start of a build id: ids are "
                         "hexadecimal (0-9, a-f)")
    if not prefix:
        return srv.store.history(project, status, limit=limit, repository=repository)
    # LIMIT -1 is SQLite's "no limit": the other filters come after, so the limit does too
    rows = [r for r in srv.store.find_by_prefix(prefix, limit=-1)
            if (not project or r.project == project) and (status is None or r.status == status)
            and (not repository or r.params.get(".repository") == repository)]
    return rows if limit is None else rows[:limit]


@bp.get("/projects")
def projects():
    """The names of the projects this server builds (for `mistry`'s shell completion)."""
    return jsonify({"projects": server().projects.names()})


def _checked(project: str, build_id: str) -> None:
    for name in (project, build_id):
        if name_problem(name):
            raise NotFound(f"no build {project}/{build_id}")


def _wants_json() -> bool:
    if request.mimetype == "application/json":
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def job_view(srv: Server, project: str, build_id: str, with_log: bool = True) -> dict:
    """{ID, Project, State, BuildInfo} for any known build: queued, running or finished; a
    finished build's BuildInfo with its log unless `with_log` is False."""
    _checked(project, build_id)
    flight = srv.scheduler.in_flight(project, build_id)
    if flight is not None and flight.job.log.finished:
        flight = None  # its record is written; the scheduler lets go of it a moment later
    row = srv.store.get(project, build_id)
    if flight is None:
        raw = srv.layout.read_info(project, build_id)
        if raw is not None:
            finished = BuildInfo.from_json(raw)
            info = srv.with_log(finished) if with_log else finished.to_json()
            return {"ID": build_id, "Project": project, "State": "ready",
                    "Status": info.get("Status"), "BuildInfo": info}
    if row is not None:
        state, status, build_info = "pending" if flight else row.state, row.status.value, row.info
    elif flight is not None:
        state, status, build_info = "pending", "running" if flight.running else "queued", None
    else:
        raise NotFound(f"no build {project}/{build_id}")
    return {"ID": build_id, "Project": project, "State": state, "Status": status,
            "BuildInfo": build_info}


@bp.get("/job/<project>/<build_id>")
def job(project: str, build_id: str):
    if not _wants_json():
        from . import views  # the HTML page is the web view's

        return views.job_page(project, build_id)
    srv = server()
    view = job_view(srv, project, build_id)
    view["BuildInfo"] = for_this_reader(view["BuildInfo"])
    if view["State"] == "pending":
        view.update(_progress(srv, project, build_id, view["Status"]))
    return jsonify(view)


def _progress(srv: Server, project: str, build_id: str, status: str) -> dict:
    """How far an unfinished build is, for `mistry`'s status line: its place in the queue
    (1-based) and the seconds since it was queued or started (the server's clock: no skew)."""
    row = srv.store.get(project, build_id)
    if row is None:
        return {}
    now = time.time()
    if status == "queued":
        ahead = srv.queue.position(JobKey(project, build_id))
        return {"QueuePosition": None if ahead is None else ahead + 1,
                "QueueLength": srv.queue.stats().queued,
                "Elapsed": round(max(0.0, now - row.queued_at), 3)}
    since = row.started_at if row.started_at is not None else row.queued_at
    return {"Elapsed": round(max(0.0, now - since), 3)}


def for_this_reader(info: dict | None) -> dict | None:
    """A BuildInfo as this request may see it: without the host path for read-only readers."""
    if info is None or sees_host_paths():
        return info
    return {k: v for k, v in info.items() if k != "Path"}


@bp.get("/log/<project>/<build_id>")
def log_stream(project: str, build_id: str):
    srv = server()
    _checked(project, build_id)
    # who reads is known only here: the stream runs after the request has ended
    shows_path = sees_host_paths()
    gone = _client_gone()
    flight = srv.scheduler.in_flight(project, build_id)
    stop_listening: Callable[[], None] | None = None
    offset = _resume_offset(request.headers.get("Last-Event-ID") or request.args.get("offset"))
    page = request.args.get("format") == "page"  # the build page's lines: HTML, stream, time
    render = PageRenderer(flight.job.log if flight else None, srv.log_path(project, build_id)) \
        if page else None
    if flight is not None:
        live = flight.job.log
        live.refresh()  # written by a builder process: its size now
        _check_offset(offset, live.size)

        def end() -> dict:  # asked once the log has finished: the record is written by then
            return end_event_data(_final_info(srv, project, build_id, shows_path),
                                  live.end_payload.get("status"), live.end_payload.get("exit_code"))

        stream = sse_stream(live, srv.log_path(project, build_id), offset, end, gone=gone,
                            render=render)
        listen_gone = request.environ.get(WHEN_CLIENT_GONE)
        if listen_gone is not None:  # a follower that hangs up stops waiting for lines at once
            stop_listening = listen_gone(live.wake)
    else:
        raw = srv.layout.read_info(project, build_id)
        if raw is None:
            row = srv.store.get(project, build_id)
            if row is None or not row.status.finished:
                raise NotFound(f"no build {project}/{build_id}")
            raw = row.info or {"Status": row.status.value}  # ended before it ran (cancelled)
        path = srv.log_path(project, build_id)
        _check_offset(offset, path.stat().st_size if path.exists() else 0)
        final = end_event_data(_final_info(srv, project, build_id, shows_path),
                               raw.get("Status"), raw.get("ExitCode"))
        stream = sse_stream(None, path, offset, lambda: final, gone=gone, render=render)
    # the thread is held until the stream closes: on its end, or when the client hangs up
    give_back = capacity().waits.take()
    response = Response(stream, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(give_back)
    if render is not None:
        response.call_on_close(render.close)
    if stop_listening is not None:
        response.call_on_close(stop_listening)
    return response


def _final_info(srv: Server, project: str, build_id: str, shows_path: bool) -> dict | None:
    """The BuildInfo of the `end` event: what GET /job/<project>/<id> (JSON) answers this reader
    (the same `job_view`; `for_this_reader`'s rule, decided before the stream), without the log,
    which the follower has just received whole (so it is not read). None when the build is gone."""
    try:
        info = job_view(srv, project, build_id, with_log=False)["BuildInfo"]
    except NotFound:
        return None
    if info is None:
        return None
    hidden = ("ContainerStdouterr",) if shows_path else ("ContainerStdouterr", "Path")
    return {k: v for k, v in info.items() if k not in hidden}


def _resume_offset(value: str | None) -> int:
    if value is None:
        return 0
    if not re.fullmatch(r"[0-9]{1,18}", value):
        raise BadRequest("Last-Event-ID (or ?offset=) must be the byte offset of an earlier event")
    return int(value)


def _check_offset(offset: int, size: int) -> None:
    if offset > size:
        raise BadRequest(f"offset {offset} is past the end of the log ({size} bytes); "
                         "resume from the id of an event you received")


@bp.post("/jobs/<project>/<build_id>/cancel")
@bp.delete("/jobs/<project>/<build_id>")
def cancel(project: str, build_id: str):
    """Cancel a queued or running build: every waiter gets the outcome (Status "cancelled")."""
    _checked(project, build_id)
    info = server().cancel(project, build_id)
    return jsonify(server().with_log(info))


@bp.get("/metrics")
def metrics():
    srv = server()
    now = time.time()
    states = [b.state(now, srv.config.builder_timeout) for b in srv.registry.builders()]
    return Response(srv.metrics.exposition([builders_by_state(states)]),
                    mimetype=CONTENT_TYPE_LATEST)


@bp.get("/healthz")
def healthz():
    """A liveness probe, and the floor the benchmarks measure other requests against: the cheapest
    answer the server can give (no store, no disk)."""
    return Response("ok\n", mimetype="text/plain")
