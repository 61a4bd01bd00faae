"""The central server's endpoints for builders on other machines (token role `builder`;
docs/distributed.md): a job's details and build context, a group's last cache, the live log and
the result, each piece sent at an offset (resumable), the result landed by mistryd/landing.py.
Every job endpoint names the lease (`builder`, `token`): only the builder that holds the job now
is heard."""

from __future__ import annotations

import dataclasses
import os
import tarfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from flask import Blueprint, Response, jsonify, request

from ..errors import BadRequest, Conflict, MistryError, NotFound, ProjectChanged
from ..jobs import JobRequest
from ..landing import Landing, WrongOffset
from ..leases import reading
from ..names import name_problem
from ..queue import Lease, LeaseLost, Outcome
from ..store import Status
from .api import server

bp = Blueprint("builder_api", __name__)
PIECE = 1 << 16  # bytes per read of a tar stream sent out


@bp.errorhandler(WrongOffset)
def wrong_offset(e: WrongOffset):
    """A piece at the wrong offset: the size the central server holds, for the sender to go
    on from (not an error of the lease)."""
    response = jsonify(error=e.message, offset=e.size)
    response.status_code = e.status
    return response


def _landing() -> Landing:
    return Landing(server())


def _checked_name(project: str, build_id: str) -> None:
    for what, value in (("project", project), ("build id", build_id)):
        if problem := name_problem(value):
            raise BadRequest(f"{what}: {problem}")


def _lease(project: str, build_id: str) -> Lease:
    _checked_name(project, build_id)
    builder = request.args.get("builder", "")
    token = request.args.get("token", "")
    if not builder or not token.isdigit():
        raise BadRequest("name the lease: ?builder=NAME&token=N")
    return _landing().lease(project, build_id, builder, int(token))


def _offset() -> int:
    raw = request.args.get("offset", "")
    if not raw.isdigit():
        raise BadRequest("offset must be a number of bytes: ?offset=N")
    return int(raw)


@bp.post("/api/builder/jobs/<project>/<build_id>/start")
def start(project: str, build_id: str):
    """What the builder needs to build the job it took."""
    srv = server()
    lease = _lease(project, build_id)
    r = lease.request
    try:
        key, fingerprint = srv.key_of(JobRequest(r["project"], r["params"], r.get("group", ""),
                                                 bool(r.get("rebuild"))))
        if key != build_id:
            raise ProjectChanged(project, "while the build was queued")
    except MistryError as e:
        # as for a job the central server's own builders cannot make (Server._job_of): it ends
        # failed with the reason now, rather than going from builder to builder until abandoned
        try:
            srv.queue.finish(lease, Outcome(Status.FAILED, None, e.message))
        except LeaseLost:
            pass
        raise Conflict(f"build {project}/{build_id} cannot be built: {e.message}") from None
    srv.store.record_running(project, build_id, now=lease.started_at)
    group = r.get("group", "")
    last = srv.layout.last_good(project, group) if group else None
    cache = None if last is None else {"group": group, "id": last.name}
    return jsonify({"request": r, "fingerprint": fingerprint,
                    "settings": dataclasses.asdict(srv.config.for_project(project)),
                    "cache": cache, "max_body_bytes": srv.config.max_body_bytes})


@bp.get("/api/builder/context/<project>/<fingerprint>")
def context(project: str, fingerprint: str):
    """The project folder as a tar: the job's build context."""
    srv = server()
    _checked_name(project, fingerprint)
    if srv.projects.fingerprint(project) != fingerprint:
        raise Conflict(f"project {project} is not at {fingerprint[:12]} any more")
    folder = srv.projects.root / project
    return _tar_response(folder, sorted(os.listdir(folder)))


@bp.get("/api/builder/cache/<project>/<build_id>")
def cache(project: str, build_id: str):
    """A group's last good build as a builder elsewhere needs it to start the group's next
    build from: its record and its /data/cache (links kept as links), as a tar."""
    srv = server()
    _checked_name(project, build_id)
    folder = srv.layout.ready(project, build_id)
    cache_dir = folder / "data" / "cache"
    if not cache_dir.is_dir() or cache_dir.is_symlink():
        raise NotFound(f"build {project}/{build_id} has no cache here")
    return _tar_response(folder, ("build_info.json", "data/cache"), hold=folder)


@bp.post("/api/builder/log/<project>/<build_id>")
def log_piece(project: str, build_id: str):
    lease = _lease(project, build_id)
    size = _landing().append_log(lease, _offset(), request.stream)
    return jsonify({"offset": size})


@bp.post("/api/builder/result/<project>/<build_id>")
def result_piece(project: str, build_id: str):
    lease = _lease(project, build_id)
    size = _landing().append_result(lease, _offset(), request.stream)
    return jsonify({"offset": size})


@bp.post("/api/builder/result/<project>/<build_id>/land")
def land(project: str, build_id: str):
    lease = _lease(project, build_id)
    size, sha256 = request.args.get("size", ""), request.args.get("sha256", "")
    if not size.isdigit() or len(sha256) != 64:
        raise BadRequest("say what was sent: ?size=BYTES&sha256=HEX")
    info = _landing().land(lease, int(size), sha256)
    return jsonify({"status": info.Status})


def _tar_response(folder: Path, entries: Iterable[str], hold: Path | None = None) -> Response:
    """These entries of `folder` (and their trees) as an uncompressed tar stream, written by a
    thread into a pipe (links are stored as links; nothing is followed). `hold`: a build folder
    kept from garbage collection while it streams."""
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with open(write_fd, "wb") as out:
            try:
                if hold is not None:
                    with reading(hold):
                        _write_tar(folder, entries, out)
                else:
                    _write_tar(folder, entries, out)
            except (BrokenPipeError, OSError):
                pass  # the reader went away: the stream ends short, the builder retries

    threading.Thread(target=write, name="mistryd-tar-out", daemon=True).start()
    src = open(read_fd, "rb")

    def chunks() -> Iterator[bytes]:
        while piece := src.read(PIECE):
            yield piece

    response = Response(chunks(), mimetype="application/x-tar")
    # closed with the response, read or not (a HEAD, a client gone): the writer then stops
    # on a broken pipe instead of waiting on a full one for ever
    response.call_on_close(src.close)
    return response


def _write_tar(folder: Path, entries: Iterable[str], out: IO[bytes]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            archive.add(folder / entry, arcname=entry, recursive=True)
