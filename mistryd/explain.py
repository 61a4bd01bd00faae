"""Why a request is (or is not) answered from cache, and where a build's cache came from.

Each finished build keeps its inputs beside build_info.json in `inputs.json`: the project's
per-file fingerprint (the entries `projects.folder_fingerprint` hashes) and the names, never the
values, of its opaque params. Its params and group are in build_info.json already. A miss is then
explained by comparing the request's inputs with those of the *nearest* cached build: the newest
successful build of the same project and group, or, when that group has none, of the project in
any group (the group is then one of the differences). See docs/provenance.md.

The comparison (`compare`) is pure; `explain` and `page_line` read the index, the build folders
and the queue.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BadRequest
from .jobs import JobRequest, is_opaque, job_key, public_params, servable
from .layout import Layout, write_json_atomically
from .names import name_problem
from .projects import entries_fingerprint, folder_entries
from .queue import JobKey
from .store import BuildRow

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("mistryd")

INPUTS_FILE = "inputs.json"
INPUTS_VERSION = 1
MAX_RECORDED_FILES = 50_000  # a bigger project keeps no file list: "files unknown"
MAX_INPUTS_BYTES = 32 << 20
MAX_LISTED_FILES = 1000  # an answer lists at most this many changed files (and counts them all)


# --- what a build was made of ------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """What goes into a key (project files, group, params) and the opaque params' names.
    `files` maps a path to "kind detail" (its hash or link target); None: not known."""

    project: str
    group: str
    params: Mapping[str, str]  # the non-opaque ones
    opaque: frozenset[str] | None = None  # names only; None: not known
    files: Mapping[str, str] | None = None


def files_of(entries: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    return {rel: f"{kind} {detail}" for rel, kind, detail in entries}


def keep_inputs(folder: Path, context: Path, fingerprint: str, opaque: Iterable[str]) -> None:
    """Write a build's inputs.json into its folder. Best effort: a build never fails for it.
    The file list is kept only when the project folder still gives the build's fingerprint."""
    try:
        entries = folder_entries(context)
        same = entries_fingerprint(entries) == fingerprint
        files = files_of(entries) if same and len(entries) <= MAX_RECORDED_FILES else None
        write_json_atomically(folder / INPUTS_FILE, {
            "Version": INPUTS_VERSION, "Fingerprint": fingerprint, "Files": files,
            "OpaqueParams": sorted(opaque)})
    except Exception as e:  # noqa: BLE001 - the build's outcome does not depend on it
        log.warning("mistryd: the inputs of %s were not recorded (%s: %s); explaining a miss "
                    "against it will say 'files unknown'", folder.name, type(e).__name__, e)


def recorded_inputs(layout: Layout, project: str, build_id: str, info: dict) -> Inputs:
    """A finished build's inputs: params and group from its record `info`, files and opaque
    names from its inputs.json (unknown when it has none, or a damaged one)."""
    params = info.get("Params")
    group = info.get("Group")
    record = _read_inputs_file(layout.ready(project, build_id) / INPUTS_FILE)
    files = record.get("Files")
    opaque = record.get("OpaqueParams")
    return Inputs(
        project=project, group=group if isinstance(group, str) else "",
        params=public_params({k: v for k, v in params.items()
                              if isinstance(k, str) and isinstance(v, str)})
        if isinstance(params, dict) else {},
        opaque=frozenset(opaque) if isinstance(opaque, list)
        and all(isinstance(n, str) for n in opaque) else None,
        files=files if isinstance(files, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()) else None)


def _read_inputs_file(path: Path) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_INPUTS_BYTES + 1)
        if len(raw) > MAX_INPUTS_BYTES:
            return {}
        record = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(record, dict) or record.get("Version") != INPUTS_VERSION:
        return {}
    return record


def cache_source(info: dict | None) -> tuple[str, str, str] | None:
    """(project, group, id) of a record's `CacheFrom`, when it names a build; None otherwise
    (no cache, a record older than the field, or one that names nothing valid)."""
    source = (info or {}).get("CacheFrom")
    if not isinstance(source, dict):
        return None
    project, group, build_id = (source.get(k) for k in ("Project", "Group", "ID"))
    if not isinstance(group, str) or (group and name_problem(group)):
        return None
    if name_problem(project) or name_problem(build_id):
        return None
    assert isinstance(project, str) and isinstance(build_id, str)
    return project, group, build_id


# --- the comparison (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # added, removed or modified (content, kind, executable bit or link target)


@dataclass(frozen=True)
class ParamChange:
    name: str
    change: str  # added, removed or changed
    was: str | None = None  # the values of non-opaque params only
    now: str | None = None
    opaque: bool = False  # a '_' param: not part of the key; its name only, never a value

    def to_json(self) -> dict:
        out: dict = {"Name": self.name, "Change": self.change, "Opaque": self.opaque}
        if not self.opaque:
            out.update(Was=self.was, Now=self.now)
        return out


@dataclass(frozen=True)
class Differences:
    files: tuple[FileChange, ...] | None  # None: one side's file list is not known
    params: tuple[ParamChange, ...]
    group: tuple[str, str] | None  # (was, now) when the group differs

    @property
    def key_params(self) -> list[ParamChange]:
        return [p for p in self.params if not p.opaque]

    def summary(self) -> str:
        """'2 files, 1 param' (what makes the keys differ); opaque params are not counted."""
        parts = []
        if self.files is None:
            parts.append("files unknown")
        elif self.files:
            parts.append(_count(len(self.files), "file"))
        if self.key_params:
            parts.append(_count(len(self.key_params), "param"))
        if self.group is not None:
            parts.append("the group")
        return ", ".join(parts) or "no difference in files, params or group"

    def to_json(self) -> dict:
        files = None if self.files is None else [
            {"Path": f.path, "Change": f.change} for f in self.files[:MAX_LISTED_FILES]]
        return {
            "Files": files,
            "FilesChanged": None if self.files is None else len(self.files),
            "Params": [p.to_json() for p in self.params],
            "Group": None if self.group is None else {"Was": self.group[0], "Now": self.group[1]},
        }


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def compare(old: Inputs, new: Inputs) -> Differences:
    """What differs from `old` (the nearest cached build) to `new` (the request)."""
    files = None if old.files is None or new.files is None else file_changes(old.files, new.files)
    return Differences(files=files, params=param_changes(old, new),
                       group=None if old.group == new.group else (old.group, new.group))


def file_changes(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[FileChange, ...]:
    """Changed entries by path. A folder is named only when nothing inside it is (an empty
    folder added or removed): a new folder with files shows as its files."""
    changes = [FileChange(p, "removed") for p in old if p not in new]
    changes += [FileChange(p, "added") for p in new if p not in old]
    changes += [FileChange(p, "modified") for p in new if p in old and old[p] != new[p]]
    changed = {c.path for c in changes}
    folders = {p for p in changed if old.get(p, "").startswith("dir ")
               or new.get(p, "").startswith("dir ")}
    covered = {f for f in folders
               if any(p.startswith(f + "/") for p in changed if p != f)}
    return tuple(sorted((c for c in changes if c.path not in covered), key=lambda c: c.path))


def param_changes(old: Inputs, new: Inputs) -> tuple[ParamChange, ...]:
    changes = []
    for name in sorted(set(old.params) | set(new.params)):
        was, now = old.params.get(name), new.params.get(name)
        if was != now:
            change = "added" if was is None else "removed" if now is None else "changed"
            changes.append(ParamChange(name, change, was, now))
    if old.opaque is not None and new.opaque is not None:
        for name in sorted(old.opaque ^ new.opaque):
            changes.append(ParamChange(name, "added" if name in new.opaque else "removed",
                                       opaque=True))
    return tuple(changes)


# --- GET /jobs/explain -------------------------------------------------------------------------


def request_from_query(args: Iterable[tuple[str, str]]) -> dict:
    """The `POST /jobs` body from query parameters: project, group, rebuild (true/false) and
    `params[NAME]=VALUE` for each param. An opaque param must be sent empty: only its name counts
    (its value is not part of the key), and a URL is no place for a secret."""
    body: dict = {}
    params: dict[str, str] = {}
    for name, value in args:
        if name.startswith("params[") and name.endswith("]"):
            key = name[len("params["):-1]
            if key in params:
                raise BadRequest(f"param {key!r} is given twice; send it once")
            if is_opaque(key) and value:
                raise BadRequest(f"param {key!r} is opaque: its value is not part of the key, "
                                 f"so send it empty (params[{key}]=); a URL is no place for a "
                                 "secret")
            params[key] = value
        elif name in ("project", "group", "rebuild"):
            if name in body:
                raise BadRequest(f"query parameter {name!r} is given twice; send it once")
            if name == "rebuild":
                if value not in ("true", "false"):
                    raise BadRequest(f"rebuild must be true or false, got {value[:30]!r}")
                body[name] = value == "true"
            else:
                body[name] = value
        else:
            raise BadRequest(f"unknown query parameter {name[:60]!r}; known: project, group, "
                             "rebuild, params[NAME]")
    if not body and not params:
        raise BadRequest("send the POST /jobs body as JSON, or the request as query parameters "
                         "(?project=hello&group=g&params[name]=Ada)")
    if params:
        body["params"] = params
    return body


@dataclass(frozen=True)
class Nearest:
    row: BuildRow
    inputs: Inputs

    def to_json(self) -> dict:
        return {"Project": self.row.project, "Group": self.row.group, "ID": self.row.id,
                "URL": f"job/{self.row.project}/{self.row.id}"}


def explain(srv: Server, request: JobRequest) -> dict:
    """The answer of GET /jobs/explain: the request's key, whether that key is cached, queued
    or running, and what differs from the nearest cached build. UnknownProject (404) when the
    project does not exist, as POST /jobs answers."""
    build_id, fingerprint = srv.key_of(request)  # UnknownProject, as POST /jobs
    folder = srv.push.project_folder(request) or srv.projects.path(request.project)
    entries = folder_entries(folder)
    # the same snapshot of the folder for the key and the file list (it may change meanwhile)
    if entries_fingerprint(entries) != fingerprint:
        fingerprint = entries_fingerprint(entries)
        build_id = job_key(request, fingerprint)
    project = request.project
    answer: dict = {"Project": project, "Group": request.group, "ID": build_id,
                    "URL": f"job/{project}/{build_id}", "LastStatus": None, "Nearest": None,
                    "Differences": None}
    record = srv.layout.read_info(project, build_id)
    if record is not None and servable(record):
        answer.update(State="cached",
                      Summary=f"cached: build {build_id[:12]} answers this request")
        return answer
    peek = srv.queue.peek(JobKey(project, build_id))
    state = peek.status.value if peek.in_flight and peek.status is not None else "not-cached"
    if peek.status is not None and peek.status.finished:
        answer["LastStatus"] = peek.status.value
    answer["State"] = state
    new = Inputs(project, request.group, request.key_params(),
                 frozenset(request.opaque_params()), files_of(entries))
    nearest = nearest_cached(srv, project, request.group, build_id)
    if nearest is None:
        answer["Summary"] = f"{_state_words(state)}; no cached build of {project} to compare with"
        return answer
    differences = compare(nearest.inputs, new)
    answer.update(Nearest=nearest.to_json(), Differences=differences.to_json(),
                  Summary=f"{_state_words(state)}; differs from build {nearest.row.id[:12]}: "
                          f"{differences.summary()}")
    return answer


def _state_words(state: str) -> str:
    return {"not-cached": "not cached", "queued": "not cached (queued)",
            "running": "not cached (running)"}.get(state, state)


def nearest_cached(srv: Server, project: str, group: str, build_id: str) -> Nearest | None:
    """The newest successful build of the project and group; when the group has none, of the
    project in any group. Its folder must still hold a servable record."""
    for in_group in (group, None):
        row = srv.store.newest_succeeded(project, in_group, other_than=build_id)
        found = _with_inputs(srv.layout, row)
        if found is not None:
            return found
    return None


def _with_inputs(layout: Layout, row: BuildRow | None) -> Nearest | None:
    if row is None:
        return None
    info = layout.read_info(row.project, row.id)
    if info is None or not servable(info):
        return None
    return Nearest(row, recorded_inputs(layout, row.project, row.id, info))


# --- the build page's line ---------------------------------------------------------------------


@dataclass(frozen=True)
class PageLine:
    """'differs from build X: 2 files, 1 param' on build Y's page, X linked."""

    project: str
    id: str
    summary: str


def page_line(srv: Server, project: str, build_id: str, info: dict,
              queued_at: float | None) -> PageLine | None:
    """How a finished build differs from the build its cache came from, or else from the
    newest successful build of its project and group queued before it; None when there is
    none (or its record is gone)."""
    reference: Nearest | None = None
    source = cache_source(info)
    if source is not None and source[0] == project:
        row = srv.store.get(project, source[2])
        reference = _with_inputs(srv.layout, row)
    if reference is None:
        if queued_at is None:
            return None
        row = srv.store.newest_succeeded(project, str(info.get("Group") or ""), before=queued_at,
                                         other_than=build_id)
        reference = _with_inputs(srv.layout, row)
    if reference is None:
        return None
    this = recorded_inputs(srv.layout, project, build_id, info)
    return PageLine(project, reference.row.id, compare(reference.inputs, this).summary())

