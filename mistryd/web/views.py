"""HTML pages for people: dashboard, history, project, build, full log, artifact manifest.

Lists come from the SQLite index only (see history.py); the build page reads one build's folder
at most. Everything from builds is escaped by Jinja2's autoescaping in the templates and by
textContent in static/mistryd.js; the only markup made from a build's text is a log line, which
ansi2html escapes and colours (logview.py).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO
from urllib.parse import quote

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from flask.sansio.blueprints import BlueprintSetupState

from .. import explain, history, leases, safe_tree, verify
from ..jobs import JobRequest, public_params, record_status
from ..logs import IMAGE, Marks, open_log, open_marks
from ..names import name_problem
from ..push import record as push_record
from ..queue import JobKey, builder_of
from ..remote.registry import listed
from ..server import Server
from ..store import BuildRow, Status
from . import logview

bp = Blueprint("views", __name__)
log = logging.getLogger("mistryd")

LOG_TAIL_LINES = 2000
LOG_TAIL_BYTES = 2 << 20  # a tail of a few huge lines is cut here, at a line boundary
MAX_ARTIFACTS = 1000


def server() -> Server:
    return current_app.extensions["mistryd"]


# --- the dashboard's charts over time: a point a minute, written on the way of a request ------


@bp.record_once
def _add_sampler(state: BlueprintSetupState) -> None:
    state.app.extensions["mistryd.sampler"] = history.Sampler()


@bp.before_app_request
def sample_for_charts() -> None:
    """At most once a minute (one float compare on every other request, the hit path's too)."""
    sampler: history.Sampler = current_app.extensions["mistryd.sampler"]
    now = time.time()
    if not sampler.due(now):
        return
    srv = server()
    counts = srv.queue.stats()
    try:
        sampler.sample(srv.store, history.cache_use(srv.metrics), counts.queued, counts.running,
                       now)
    except sqlite3.Error as e:  # a full disk or a busy index: a gap in a chart, not a failed request
        log.warning("mistryd: could not record the dashboard's chart point: %s", e)


# --- lists ------------------------------------------------------------------------------------


@bp.get("/")
def dashboard():
    srv = server()
    jobs = srv.queue.jobs()  # in every process, oldest first
    running = [j for j in jobs if j.status is Status.RUNNING]
    queued = [j for j in jobs if j.status is Status.QUEUED]
    cache = history.cache_use(srv.metrics)
    sampler: history.Sampler = current_app.extensions["mistryd.sampler"]
    now = time.time()
    builders = listed(srv.registry, now, srv.config.builder_timeout)
    return render_template(
        "index.html", running=running, queued=queued,
        # one builder process of a machine alone says nothing the counts do not
        builders=builders if len(builders) > 1 or srv.config.queue else [],
        recent=history.recent_finished(srv.store, limit=20),
        counts=history.status_counts(srv.store), cache=cache,
        projects=srv.projects.names(), statuses=[s.value for s in Status],
        timeline=history.timeline(srv.store, now, current=sampler.current(
            cache, len(queued), len(running), now)),
    )


@bp.get("/builds")
def builds():
    srv = server()
    filters = _filters()
    page = history.page_of(srv.store, filters, _page_number())
    return render_template("builds.html", page=page, filters=filters,
                           projects=srv.projects.names(), statuses=[s.value for s in Status],
                           repositories=sorted(srv.config.repositories))


@bp.get("/project/<project>")
def project_page(project: str):
    srv = server()
    known = project in srv.projects.names()
    if name_problem(project) or (not known and not srv.store.count(project)):
        return _not_found(f"Unknown project '{project}'. The projects are listed on the "
                          "dashboard.")
    filters = history.Filters.parse(project, request.args.get("status", ""),
                                    request.args.get("group", ""))
    page = history.page_of(srv.store, filters, _page_number())
    flights = [j for j in srv.queue.jobs() if j.key.project == project]
    newest = srv.store.history(project, limit=1)
    return render_template(
        "project.html", project=project, known=known, page=page, filters=filters,
        groups=history.latest_per_group(srv.store, project), flights=flights,
        counts=history.status_counts(srv.store, project), statuses=[s.value for s in Status],
        durations=history.project_chart(srv.store, project),
        form_group=newest[0].group if newest else "",
        form_params="\n".join(f"{k}={v}" for k, v in sorted(newest[0].params.items()))
        if newest else "",
    )


@bp.get("/find")
def find():
    """Jump to a build by a prefix of its id: straight to it when only one build matches."""
    srv = server()
    prefix = request.args.get("id", "").strip().lower()
    matches: list[BuildRow] = []
    problem = ""
    if not prefix:
        problem = "Type the first characters of a build id."
    elif not all(c in "0123456789abcdef" for c in prefix):
        problem = f"'{prefix}' is not the start of a build id: ids are hexadecimal (0-9, a-f)."
    else:
        matches = srv.store.find_by_prefix(prefix, limit=51)
        if len(matches) == 1:
            m = matches[0]
            return redirect(url_for("api.job", project=m.project, build_id=m.id))
        if not matches:
            problem = f"No build id starts with '{prefix}'."
    status = 404 if problem and prefix else 200
    return render_template("find.html", prefix=prefix, jump_value=prefix, matches=matches[:50],
                           more=len(matches) > 50, problem=problem), status


def _filters() -> history.Filters:
    a = request.args
    return history.Filters.parse(a.get("project", ""), a.get("status", ""), a.get("group", ""),
                                 a.get("repository", ""), a.get("builder", ""))


def _page_number() -> int:
    return max(1, request.args.get("page", default=1, type=int) or 1)


def _not_found(message: str):
    return render_template("error.html", message=message), 404


# --- one build --------------------------------------------------------------------------------


@dataclass
class Artifact:
    path: str
    size: int
    url: str
    view_url: str | None  # text: opens in the browser


@dataclass
class LogTail:
    lines: list[logview.LogLine] = field(default_factory=list)
    image: list[logview.LogLine] = field(default_factory=list)  # the image build's lines first
    skipped_bytes: int = 0  # bytes before the first shown line
    end: int = 0  # the byte offset after the last shown line: where the live stream resumes

    @property
    def count(self) -> int:
        return len(self.lines) + len(self.image)

    def split_image(self) -> LogTail:
        """The leading lines of the image build apart, so the page can fold them."""
        n = 0
        while n < len(self.lines) and self.lines[n].stream == IMAGE:
            n += 1
        self.image, self.lines = self.lines[:n], self.lines[n:]
        return self


@dataclass
class BuildPage:
    project: str
    id: str
    group: str
    params: dict
    status: str
    live: bool  # still queued or running: the page follows the log and then refreshes itself
    exit_code: int | None
    error: str
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    timings: dict
    duration: float | None
    cached: bool
    coalesced: bool
    incremental: bool
    served_from_cache: bool
    artifacts: list[Artifact]
    artifacts_truncated: bool
    log: LogTail
    queue_position: int | None = None  # 1 = next to start
    queue_length: int = 0
    cache_from: tuple[str, str, str] | None = None  # (project, group, id) its /data/cache came from
    differs: explain.PageLine | None = None  # from its cache's build, or the nearest before it
    verified: verify.PageLine | None = None  # its last verification (POST /jobs/verify)
    push: push_record.PushFacts | None = None  # a push build's repository, branch, commit ...
    builder: str = ""  # who built it (or builds it now): BuildInfo.Builder, or the lease holder

    @property
    def resubmit(self) -> dict:
        """The POST /jobs body that asks for this build again (its '_' params are not kept)."""
        return {"project": self.project, "params": self.params, "group": self.group}

    @property
    def manifest_url(self) -> str:
        return f"/artifacts/{quote(self.project, safe='')}/{quote(self.id, safe='')}/"

    @property
    def artifacts_tar_url(self) -> str:
        return f"/artifacts/{quote(self.project, safe='')}/{quote(self.id, safe='')}.tar"


def job_page(project: str, build_id: str):
    """The HTML branch of GET /job/<project>/<id> (the JSON branch stays in api.py)."""
    srv = server()
    if name_problem(project) or name_problem(build_id):
        return _not_found(f"No build {project}/{build_id}.")
    page = build_page(srv, project, build_id)
    if page is None:
        return _not_found(f"No build {project}/{build_id}. Builds are listed on the dashboard; "
                          "a build removed by garbage collection is gone.")
    return render_template("job.html", b=page, tail_limit=LOG_TAIL_LINES, now=time.time())


def build_page(srv: Server, project: str, build_id: str) -> BuildPage | None:
    flight = srv.scheduler.in_flight(project, build_id)
    row = srv.store.get(project, build_id)
    job = flight.job if flight is not None else None
    # The index row is the truth for the state: it turns finished before the flight is dropped,
    # and during a rebuild the old ready/ folder (and its log) is still there.
    finished = row.status.finished if row is not None else job is None
    live = job is not None and not finished
    info: dict = {}
    if finished:
        info = (row.info if row is not None else None) or \
            srv.layout.read_info(project, build_id) or {}
        if row is None and not info:
            return None

    if row is not None:
        status, params, group = row.status.value, row.params, row.group
    elif job is not None:
        status = "running" if flight is not None and flight.running else "queued"
        params, group = job.request.key_params(), job.request.group
    else:  # a finished folder the index does not know (yet)
        status = record_status(info)
        params, group = info.get("Params") or {}, info.get("Group") or ""

    log = LogTail()
    path = srv.log_path(project, build_id)
    if live and job is not None:
        job.log.refresh()  # written by a builder process: where its file is by now
    if live and job is not None and job.log.path is not None:
        # pending/ first; if the build finished meanwhile, its folder is now in ready/
        log = _with_marks(_log_tail(open_log(job.log, path), whole_lines_only=True),
                          open_marks(job.log, path))
    elif finished:
        log = _with_marks(_log_tail(open_log(None, path), whole_lines_only=False),
                          open_marks(None, path))
    artifacts, truncated = _artifacts(srv, project, build_id) if finished else ([], False)
    position, queue_length = _queue_position(srv, project, build_id) \
        if live and flight is not None and not flight.running else (None, 0)
    duration = info.get("Duration")
    return BuildPage(
        project=project, id=build_id, group=group, params=dict(params), status=status,
        live=live,
        exit_code=(row.exit_code if row is not None else info.get("ExitCode"))
        if finished else None,
        error=str(info.get("ErrBuild") or (row.reason if row is not None and finished else "")),
        queued_at=row.queued_at if row is not None else (job.queued_at if job else None),
        started_at=row.started_at if row is not None else None,
        finished_at=row.finished_at if row is not None and finished else None,
        timings=dict(info.get("Timings") or {}),
        duration=duration / 1e9 if isinstance(duration, (int, float)) and finished else None,
        cached=bool(info.get("Cached")), coalesced=bool(info.get("Coalesced")),
        incremental=bool(info.get("Incremental")),
        served_from_cache=bool(row is not None and finished and row.finished_at is not None
                               and row.last_used > row.finished_at + 0.001),
        artifacts=artifacts, artifacts_truncated=truncated, log=log,
        queue_position=position, queue_length=queue_length,
        cache_from=explain.cache_source(info),
        builder=str(info.get("Builder") or "") if finished else _running_on(srv, project, build_id),
        differs=explain.page_line(srv, project, build_id, info,
                                  row.queued_at if row is not None else None)
        if finished and info else None,
        verified=verify.page_line(srv.layout.ready(project, build_id), info)
        if finished and info else None,
        push=_push_facts(srv, project, build_id, finished,
                         job.request if job is not None else None, row),
    )


def _push_facts(srv: Server, project: str, build_id: str, finished: bool,
                request: JobRequest | None, row: BuildRow | None) -> push_record.PushFacts | None:
    """What the page shows of a push build: from push.json once it ended, before that from the
    request (the running job's, or the index row's with its opaque params)."""
    if finished:
        return push_record.read(srv.layout.ready(project, build_id))
    if request is not None:
        return push_record.of_params(project, request.params)
    if row is not None:
        return push_record.of_params(project, {**row.params, **row.opaque})
    return None


def _running_on(srv: Server, project: str, build_id: str) -> str:
    """The builder a running build runs on ("" while it is queued)."""
    found = srv.queue.job(JobKey(project, build_id))
    return builder_of(found.builder) or "" if found is not None else ""


def _queue_position(srv: Server, project: str, build_id: str) -> tuple[int | None, int]:
    """(1-based place among the queued builds, how many are queued), by the time they came."""
    queued = [j for j in srv.queue.jobs() if j.status is Status.QUEUED]
    for i, j in enumerate(queued, start=1):
        if (j.key.project, j.key.id) == (project, build_id):
            return i, len(queued)
    return None, len(queued)


def _with_marks(raw: RawTail, marks: Marks | None) -> LogTail:
    """The tail's lines rendered (colours as escaped HTML, stream and time from the marks)."""
    try:
        lines = logview.render(raw.lines, raw.skipped_bytes, marks)
    finally:
        if marks is not None:
            marks.close()
    return LogTail(lines, skipped_bytes=raw.skipped_bytes, end=raw.end).split_image()


def _artifacts(srv: Server, project: str, build_id: str) -> tuple[list[Artifact], bool]:
    """The build's artifact files (at most MAX_ARTIFACTS), read as every reader of a build
    folder reads it: under a lease, from descriptors, never following a link."""
    base = f"/artifacts/{quote(project, safe='')}/{quote(build_id, safe='')}/"
    view_base = f"/job/{quote(project, safe='')}/{quote(build_id, safe='')}/view/"
    found: list[Artifact] = []
    try:
        with leases.reading(srv.layout.ready(project, build_id)) as build_fd:
            root_fd = safe_tree.open_dir(build_fd, "data/artifacts")
            try:
                for entry in safe_tree.walk(root_fd, MAX_ARTIFACTS * 4, 128):
                    if entry.type != "file":
                        continue
                    found.append(Artifact(entry.path, entry.size,
                                          base + quote(entry.path, safe="/"),
                                          view_base + quote(entry.path, safe="/")
                                          if is_text(entry.path) else None))
                    if len(found) > MAX_ARTIFACTS:
                        return found[:MAX_ARTIFACTS], True
            finally:
                os.close(root_fd)
    except safe_tree.TreeTooLarge:
        return found[:MAX_ARTIFACTS], True
    except (OSError, safe_tree.TreeError):
        return [], False  # no folder, or not a real one: nothing to list
    return found, False


@dataclass
class RawTail:
    lines: list[tuple[int, str]] = field(default_factory=list)  # (offset after the line, text)
    skipped_bytes: int = 0
    end: int = 0


def _log_tail(f: BinaryIO | None, whole_lines_only: bool,
              max_lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES) -> RawTail:
    """The last `max_lines` lines of the open log `f` (closed here), read backwards from the end
    so a 100k-line log costs no more than a short one. For a running build only whole lines:
    the page resumes the live stream at `end`, and a partial line arrives with its newline."""
    if f is None:
        return RawTail()
    with f:
        size = os.fstat(f.fileno()).st_size
        block = 64 << 10
        data = b""
        pos = size
        while pos > 0 and data.count(b"\n") <= max_lines and len(data) < max_bytes:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
        end = size
        if whole_lines_only:
            data = data[:data.rfind(b"\n") + 1]
            end = pos + len(data)
        if pos > 0:  # the first line read may start mid-line: drop it
            data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        lines = lines[-max_lines:]
        tail = b"\n".join(lines) + (b"\n" if data.endswith(b"\n") else b"")
        while lines and len(tail) > max_bytes:
            tail = tail[len(lines.pop(0)) + 1:]
        start = end - len(tail)
        ends = []
        for line in lines:
            start += len(line) + 1
            ends.append(min(start, end))  # a last line without its newline ends at `end`
        return RawTail([(e, line.decode("utf-8", "replace")) for e, line in zip(ends, lines,
                                                                                 strict=True)],
                       skipped_bytes=end - len(tail), end=end)


# --- artifacts for people: text opens in the browser, the manifest as a page -----------------

# text kinds that mimetypes does not call text/*
TEXT_KINDS = frozenset({"application/json", "application/xml", "application/javascript",
                        "application/x-sh", "application/toml", "application/yaml",
                        "application/x-yaml", "image/svg+xml"})
TEXT_SUFFIXES = frozenset({".log", ".md", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf",
                           ".txt", ".csv", ".tsv", ".diff", ".patch", ".lock", ".sum", ".mod",
                           ".rst", ".properties", ".gradle", ".env", ".out"})


def is_text(path: str) -> bool:
    """Whether an artifact's name says it is text (it then opens in the browser as plain text)."""
    name = path.rsplit("/", 1)[-1].lower()
    kind, _ = mimetypes.guess_type(name, strict=False)
    suffix = name[name.rfind("."):] if "." in name else ""
    return bool(kind and (kind.startswith("text/") or kind in TEXT_KINDS)) or \
        suffix in TEXT_SUFFIXES


@bp.get("/job/<project>/<build_id>/view/<path:subpath>")
def view_artifact(project: str, build_id: str, subpath: str):
    """An artifact shown in the browser, whatever it holds, as plain UTF-8 text: never as HTML or
    script of this origin (`text/plain`, `nosniff`, and a sandbox for good measure). The bytes
    are the download's (artifacts.py: the same lease, checks, ranges and caching)."""
    from . import artifacts

    response = artifacts.get_file(project, build_id, subpath)
    response.mimetype = "text/plain"  # Flask adds "; charset=utf-8"
    response.headers["Content-Disposition"] = "inline"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response


def wants_page() -> bool:
    """A browser's page load (text/html over JSON); `*/*` alone, as curl and clients send,
    keeps JSON."""
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


@dataclass
class ManifestEntry:
    path: str
    type: str
    size: int
    mode: int
    sha256: str
    target: str
    download_url: str
    view_url: str | None


def manifest_page(project: str, build_id: str, manifest: Response):
    """The artifact manifest (GET /artifacts/<project>/<id>/) as a page, read from the JSON answer
    artifacts.py made: one entry a line, the first MAX_ARTIFACTS of them."""
    entries: list[ManifestEntry] = []
    more = False
    base = f"/artifacts/{quote(project, safe='')}/{quote(build_id, safe='')}/"
    view = f"/job/{quote(project, safe='')}/{quote(build_id, safe='')}/view/"
    try:
        for line in _lines(manifest.response):
            line = line.strip().lstrip(b",")
            if not (line.startswith(b'{"path"') and line.endswith(b"}")):
                continue
            if len(entries) == MAX_ARTIFACTS:
                more = True
                break
            e = json.loads(line)
            path = str(e.get("path", ""))
            kind = str(e.get("type", ""))
            entries.append(ManifestEntry(
                path=path, type=kind, size=int(e.get("size") or 0), mode=int(e.get("mode") or 0),
                sha256=str(e.get("sha256", "")), target=str(e.get("target", "")),
                download_url=base + quote(path, safe="/"),
                view_url=view + quote(path, safe="/") if kind == "file" and is_text(path) else None))
    finally:
        manifest.close()
    return render_template("manifest.html", project=project, id=build_id, entries=entries,
                           more=more, json_url=base)


def _lines(chunks) -> Iterator[bytes]:
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        yield from lines
    if rest:
        yield rest


@bp.get("/job/<project>/<build_id>/out.log")
def full_log(project: str, build_id: str):
    """The whole log as a plain-text download (the build page shows only its tail)."""
    srv = server()
    if name_problem(project) or name_problem(build_id):
        return _not_found(f"No build {project}/{build_id}.")
    flight = srv.scheduler.in_flight(project, build_id)
    # a live build's own file (never the previous build's log a rebuild's swap leaves behind)
    f = open_log(flight.job.log if flight is not None else None, srv.log_path(project, build_id))
    if f is not None:
        name = f"{project}-{build_id[:12]}.log"
        response = Response(_chunks(f), mimetype="text/plain")
        response.headers["Content-Disposition"] = \
            f"attachment; filename*=UTF-8''{quote(name, safe='')}"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
    return _not_found(f"No log for {project}/{build_id} (yet).")


def _chunks(f: BinaryIO, size: int = 256 << 10):
    with f:
        while chunk := f.read(size):
            yield chunk


# --- template helpers -------------------------------------------------------------------------


@bp.app_context_processor
def session_links() -> dict:
    """Log in / log out links in the header, when the server has tokens (see web/auth.py)."""
    srv = current_app.extensions.get("mistryd")
    enabled = bool(srv is not None and getattr(srv.config, "tokens", ())
                   and "auth.login" in current_app.view_functions)
    return {"auth_enabled": enabled}


@bp.app_template_filter("when")
def when(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("iso")
def iso(ts: float | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@bp.app_template_filter("ago")
def ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return ""
    delta = max(0.0, (time.time() if now is None else now) - ts)
    return seconds(delta) + " ago" if delta >= 1 else "just now"


@bp.app_template_filter("seconds")
def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.1f} s"
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value // 60:.0f} min {value % 60:.0f} s"
    if value < 2 * 86400:
        return f"{value // 3600:.0f} h {value % 3600 // 60:.0f} min"
    return f"{value // 86400:.0f} days"


@bp.app_template_filter("size")
def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@bp.app_template_filter("public_params")
def public_params_filter(params: dict) -> dict:
    """A request's params without the opaque `_` ones (never shown)."""
    return public_params(params)


@bp.app_template_filter("builder_name")
def builder_name(lease_holder: str | None) -> str:
    """The builder a running job's lease holder belongs to ("" while it is queued)."""
    return builder_of(lease_holder) or ""


@bp.app_template_filter("percent")
def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


@bp.app_template_global("page_url")
def page_url(**args: str | int) -> str:
    """The current page's URL with some query arguments replaced (the others, filters, kept)."""
    merged = {**request.args.to_dict(), **(request.view_args or {}), **args}
    return url_for(request.endpoint or "views.builds", **merged)
