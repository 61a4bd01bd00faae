"""Dependency-ordered batches over HTTP (docs/batches.md): `POST /batches` records a batch and
submits the jobs that need nothing; `GET /batches/<id>` tells how each job stands (JSON, or a page
for browsers)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from flask import Blueprint, jsonify, render_template

from .. import batches
from ..errors import NotFound
from ..jobs import rfc3339
from ..server import Server
from ..store import BatchJobRow, Status
from .api import _json_body, _wants_json, server
from .auth import check_group

bp = Blueprint("batches", __name__)

_BATCH_ID = re.compile(r"[0-9a-f]{32}")


@bp.post("/batches")
def post_batch():
    srv = server()
    jobs = batches.parse_batch(_json_body())
    for job in jobs:  # a token limited to groups may ask only for those, as in POST /jobs
        check_group(job.request.group)
    batch_id = batches.create(srv, jobs)
    return jsonify({"id": batch_id, "url": f"batches/{batch_id}",
                    "jobs": {job.name: _link(job) for job in srv.store.batch_jobs(batch_id)}}), 201


@bp.get("/batches/<batch_id>")
def batch(batch_id: str):
    srv = server()
    view = batch_view(srv, batch_id)
    if _wants_json():
        return jsonify(view)
    return render_template("batch.html", batch=view)


def batch_view(srv: Server, batch_id: str) -> dict:
    """A batch as GET /batches/<id> answers it: its status (running until every job has ended,
    then succeeded or failed) and each job's."""
    found = srv.store.batch(batch_id) if _BATCH_ID.fullmatch(batch_id) else None
    if found is None:
        raise NotFound(f"no batch {batch_id[:40]!r}")
    now = time.time()
    jobs = {job.name: _job_view(job, now) for job in srv.store.batch_jobs(batch_id)}
    status = "running" if found.finished_at is None else (
        "succeeded" if all(j["status"] == Status.SUCCEEDED.value for j in jobs.values())
        else "failed")
    return {"id": batch_id, "url": f"batches/{batch_id}", "status": status,
            "created_at": _time(found.created_at), "finished_at": _time(found.finished_at),
            "jobs": jobs}


def _job_view(job: BatchJobRow, now: float) -> dict:
    state = batches.observed_state(job, now)
    submitted = job.state != batches.WAITING and job.state != batches.SKIPPED
    # ended, and the driver has not recorded it yet: the reason is its build's, as it will record
    reason = job.build_reason if job.state == batches.SUBMITTED and state in batches.ENDS \
        else job.reason
    return {**_link(job), "project": job.project, "group": job.group, "params": job.params,
            "needs": list(job.needs),
            "status": Status.QUEUED.value if state == "lost" else state, "reason": reason,
            "started_at": _time(job.build_started_at) if submitted else None,
            "finished_at": _time(job.build_finished_at) if submitted and state in batches.ENDS
            else None}


def _link(job: BatchJobRow) -> dict:
    return {"id": job.build_id, "url": f"job/{job.project}/{job.build_id}"}


def _time(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(datetime.fromtimestamp(ts, UTC))
