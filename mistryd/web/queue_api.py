"""The queue as JSON (chaotic-manager's endpoints, docs/distributed.md): `GET /api/queue/stats`
(counts and the builders) and `GET /api/queue/jobs` (what is queued and running, where)."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify

from ..queue import builder_of
from ..remote.registry import listed
from ..store import Status
from .api import server

bp = Blueprint("queue_api", __name__)


@bp.get("/api/queue/stats")
def stats():
    srv = server()
    now = time.time()
    queue = srv.queue.stats()
    counts = srv.store.status_counts()
    builders = listed(srv.registry, now, srv.config.builder_timeout)
    return jsonify({
        "queued": queue.queued, "running": queue.running,
        "finished": {s.value: counts.get(s.value, 0) for s in Status if s.finished},
        "builders": builders,
    })


@bp.get("/api/queue/jobs")
def jobs():
    srv = server()
    out, waiting = [], 0
    for job in srv.queue.jobs():
        queued = job.status is Status.QUEUED
        out.append({"project": job.key.project, "id": job.key.id, "status": job.status.value,
                    "builder": None if queued else builder_of(job.builder),
                    "position": waiting if queued else None,
                    "queued_at": job.queued_at, "started_at": job.started_at,
                    "url": f"job/{job.key.project}/{job.key.id}"})
        waiting += queued
    return jsonify({"jobs": out})
