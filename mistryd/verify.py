"""Rebuild and diff (`POST /jobs/verify`, `mistry verify`): would a cached build give the same
bytes again? See docs/provenance.md.

A verification is not a build: it has no key of its own, no queue row, no place in ready/ and no
group pointer, so it is never coalesced with a build, never served and never a group's cache. It
runs in the process that received the request (in a thread of its own, one at a time on the whole
server: a lock under .mistryd/), in a folder under .mistryd/verify/ that nothing serves, starting
from the cache the cached build started from (its `CacheFrom`, while that build exists), and with
the project's image (or one built without the layer cache, `image_cache=False`, tagged for the
verification only and removed after it). Its artifacts are compared with the cached build's, entry
by entry (kind, permission bits, size and sha256, or a link's target); the folder is removed after
the comparison. The outcome goes on the cached build: `Reproducible` and `VerifiedAt` in its
build_info.json and the index (upstream's fields untouched), the whole answer in verify.json
beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import leases
from .builder import Job, run_outcome
from .docker_runner import ImageBuildCancelled, ImageBuildError, ImageBuildTimedOut
from .done import Done
from .errors import MistryError, NotFound
from .explain import cache_source
from .jobs import JobRequest, rfc3339, servable
from .layout import INFO_FILE, LOG_FILE
from .safe_tree import TreeError, digests_of, open_dir, open_regular_at, walk
from .store import Status

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("mistryd")

VERIFY_FILE = "verify.json"  # beside build_info.json: the last verification's answer
MAX_ENTRIES = 200_000  # artifacts compared per side; more is refused with a reason
MAX_DEPTH = 128
MAX_LISTED = 1000  # differing entries listed in an answer (all are counted)
LOG_TAIL_BYTES = 4000  # of a failed rebuild's log, in its answer
_SLOT_POLL = 0.2


# --- the comparison (pure once the trees are read) ---------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One artifact entry as compared: its kind, permission bits, and content (files: size and
    sha256; links: target). Times are never compared."""

    type: str
    mode: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None

    def to_json(self) -> dict:
        out: dict = {"Type": self.type, "Mode": f"{self.mode:04o}"}
        if self.type == "file":
            out.update(Size=self.size, Sha256=self.sha256)
        elif self.type == "symlink":
            out["Target"] = self.target
        return out


def tree_entries(root_fd: int) -> dict[str, Entry]:
    """Every entry below the open folder `root_fd`, read as the artifact downloads read it (no
    link followed, special files left out). TreeError when it cannot be read or is too large."""
    entries: dict[str, Entry] = {}
    for found in walk(root_fd, MAX_ENTRIES, MAX_DEPTH):
        if found.type == "file":
            fd = open_regular_at(found.dir_fd, found.name, found.path)
            try:
                sha256, _ = digests_of(fd, found.size, found.path)
            finally:
                os.close(fd)
            entries[found.path] = Entry("file", found.mode, found.size, sha256)
        else:
            entries[found.path] = Entry(found.type, found.mode, target=found.target)
    return entries


@dataclass(frozen=True)
class Difference:
    path: str
    change: str  # added (only in the rebuild), removed (only in the cached build) or modified
    cached: Entry | None
    rebuilt: Entry | None

    def to_json(self) -> dict:
        return {"Path": self.path, "Change": self.change,
                "Cached": None if self.cached is None else self.cached.to_json(),
                "Rebuilt": None if self.rebuilt is None else self.rebuilt.to_json()}


def differences(cached: Mapping[str, Entry], rebuilt: Mapping[str, Entry]) -> list[Difference]:
    """The entries that differ between the two trees, by path."""
    out = []
    for path in sorted(set(cached) | set(rebuilt)):
        was, now = cached.get(path), rebuilt.get(path)
        if was != now:
            change = "added" if was is None else "removed" if now is None else "modified"
            out.append(Difference(path, change, was, now))
    return out


def summary(compared: int, found: list[Difference]) -> str:
    if not found:
        return f"reproducible: {compared} artifact entr{'y' if compared == 1 else 'ies'} identical"
    names = ", ".join(d.path for d in found[:3]) + (", ..." if len(found) > 3 else "")
    return (f"not reproducible: {len(found)} of {compared} artifact entr"
            f"{'y' if compared == 1 else 'ies'} differ{'s' if len(found) == 1 else ''} ({names})")


# --- one verification --------------------------------------------------------------------------


@dataclass
class Verification:
    request: JobRequest
    build_id: str
    fingerprint: str
    started_at: str  # the cached build's StartedAt: which run of the key is verified
    image_cache: bool
    token: str = field(default_factory=lambda: secrets.token_hex(6))
    cancel: threading.Event = field(default_factory=threading.Event)
    done: Done = field(default_factory=Done)
    result: dict | None = None

    @property
    def project(self) -> str:
        return self.request.project

    def head(self) -> dict:
        return {"Project": self.project, "ID": self.build_id,
                "URL": f"job/{self.project}/{self.build_id}", "Group": self.request.group,
                "ImageCache": self.image_cache}


class Verifier:
    """The verifications of one process, joined by (project, build, image cache)."""

    def __init__(self, srv: Server):
        self.srv = srv
        self.root = srv.layout.state_dir() / "verify"
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str, bool], Verification] = {}
        self._threads: list[threading.Thread] = []

    def start(self, request: JobRequest, image_cache: bool = True) -> Verification:
        """Verify the cached build that answers `request`, or join the verification of it that
        runs. UnknownProject (404) as POST /jobs; NotFound when no successful build answers it."""
        build_id, fingerprint = self.srv.key_of(request)
        info = self.srv.layout.read_info(request.project, build_id)
        if info is None or not servable(info):
            raise NotFound(f"no cached build of this request of {request.project} (its key "
                           f"{build_id[:12]} has no successful build): build it first, then "
                           "verify it")
        key = (request.project, build_id, image_cache)
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running
            verification = Verification(request, build_id, fingerprint,
                                        str(info.get("StartedAt") or ""), image_cache)
            self._running[key] = verification
            thread = threading.Thread(target=self._run, args=(verification,), daemon=True,
                                      name=f"verify-{build_id[:12]}")
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return verification

    def status(self, project: str, build_id: str) -> dict:
        """A verification of the build that runs (in any process), else the last one recorded."""
        if self._in_progress(project, build_id):
            return {"Project": project, "ID": build_id, "URL": f"job/{project}/{build_id}",
                    "State": "running"}
        recorded = recorded_verification(self.srv.layout.ready(project, build_id))
        if recorded is None:
            raise NotFound(f"build {project}/{build_id} has not been verified: POST /jobs/verify "
                           "with the request it answers")
        return recorded

    def _in_progress(self, project: str, build_id: str) -> bool:
        with self._lock:
            if any(k[:2] == (project, build_id) for k in self._running):
                return True
        return any((self.root / project).glob(f"{build_id}.*"))

    def stop(self, wait: float = 10) -> None:
        """Cancel the verifications of this process (the server stops) and let them clean up."""
        with self._lock:
            for verification in self._running.values():
                verification.cancel.set()
            threads = list(self._threads)
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def remove_leftovers(self) -> int:
        """At start-up: the folders of verifications a stopped process left (their containers
        are removed with the other orphans)."""
        removed = 0
        for folder in self.root.glob("*/*"):
            self.srv.storage.remove(folder)
            removed += 1
        return removed

    # --- the run ------------------------------------------------------------------------------

    def _run(self, v: Verification) -> None:
        try:
            v.result = self._verify(v)
        except MistryError as e:
            v.result = _no_verdict(v, Status.FAILED, e.message)
        except Exception as e:  # noqa: BLE001 - a verification ends with an answer, always
            log.exception("mistryd: the verification of %s/%s failed", v.project, v.build_id)
            v.result = _no_verdict(v, Status.FAILED, f"mistryd: {type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._running.pop((v.project, v.build_id, v.image_cache), None)
            v.done.set()

    def _verify(self, v: Verification) -> dict:
        layout = self.srv.layout
        with self._slot(v), leases.reading(layout.ready(v.project, v.build_id)) as folder_fd:
            info = _read_json_at(folder_fd, INFO_FILE)
            if info is None or not servable(info) or info.get("StartedAt") != v.started_at:
                raise NotFound(f"build {v.project}/{v.build_id} was rebuilt or removed while "
                               "its verification waited; verify it again")
            seed = self._seed(v.project, info)  # (group, folder) the cached build started from
            work = self.root / v.project / f"{v.build_id}.{v.token}"
            job = Job(request=v.request, id=v.build_id, fingerprint=v.fingerprint,
                      context=self.srv.projects.root / v.project,
                      settings=self.srv.config.for_project(v.project), cancel=v.cancel)
            log.info("mistryd: verifying %s/%s (%s)", v.project, v.build_id,
                     "image layer cache" if v.image_cache else "no image layer cache")
            try:
                self.srv.builder.make_workspace(job, work, None if seed is None else seed[1])
                job.log.open(work / LOG_FILE)
                status, reason = self._build(job, work, v)
                job.log.finish()
                if status is Status.SUCCEEDED and self.srv.key_of(v.request)[0] != v.build_id:
                    status, reason = Status.FAILED, ("the project changed during the "
                                                     "verification; verify again")
                answer = self._compare(v, folder_fd, work) if status is Status.SUCCEEDED \
                    else _no_verdict(v, status, reason, _tail(work / LOG_FILE))
                answer["CacheFrom"] = None if seed is None else {
                    "Project": v.project, "Group": seed[0], "ID": seed[1].name}
            finally:
                job.log.finish()
                self._remove(work)
            if answer["Reproducible"] is not None:
                self._record(v, folder_fd, answer)
            log.info("mistryd: verified %s/%s: %s", v.project, v.build_id, answer["Summary"])
            return answer

    @contextlib.contextmanager
    def _slot(self, v: Verification) -> Iterator[None]:
        """One verification at a time on the whole server (all its processes): they compete for
        the CPU and the disk with the builds, and nobody is waiting for them in a hurry."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if v.cancel.wait(_SLOT_POLL):
                        raise MistryError("the verification was cancelled while it waited for "
                                          "another one to end") from None
            yield
        finally:
            os.close(fd)

    def _seed(self, project: str, info: dict) -> tuple[str, Path] | None:
        """The group and folder of the build the cached build's /data/cache came from, when it
        is still there (else the rebuild starts with an empty cache, and its answer says so)."""
        source = cache_source(info)
        if source is None or source[0] != project:
            return None
        seed_info = self.srv.layout.read_info(project, source[2])
        if seed_info is None or not servable(seed_info):
            return None
        return source[1], self.srv.layout.ready(project, source[2])

    def _build(self, job: Job, work: Path, v: Verification) -> tuple[Status, str]:
        runner = self.srv.runner
        tag = None if v.image_cache else f"{runner.image_tag(v.project, v.fingerprint)}-verify-{v.token}"
        try:
            if tag is None:
                image = runner.ensure_image(v.project, job.context, v.fingerprint, job.log,
                                            settings=job.settings, cancel=job.cancel)
            else:
                image = runner.build_image(v.project, job.context, tag, job.log, nocache=True,
                                           settings=job.settings, cancel=job.cancel)
            result = runner.run(image, runner.container_name(f"verify-{v.token}-{v.build_id[:16]}"),
                                v.project, work / "data", job.log, job.settings, job.cancel)
        except ImageBuildCancelled:
            return Status.CANCELLED, "cancelled"
        except ImageBuildTimedOut as e:
            return Status.TIMED_OUT, str(e)
        except ImageBuildError as e:
            return Status.FAILED, f"could not build the image: {e}"
        finally:
            if tag is not None:
                try:
                    runner.remove_image_tag(tag)
                except MistryError as e:
                    log.warning("mistryd: the verification's image %s stays: %s", tag, e.message)
        status, reason = run_outcome(job, result)
        return self.srv.builder.defuse(job, work / "data", status, reason)

    def _compare(self, v: Verification, folder_fd: int, work: Path) -> dict:
        try:
            cached_fd = open_dir(folder_fd, "data/artifacts")
        except TreeError:
            cached_fd = None
        work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            rebuilt_fd = open_dir(work_fd, "data/artifacts")
        except TreeError:
            rebuilt_fd = None
        finally:
            os.close(work_fd)
        try:
            cached = tree_entries(cached_fd) if cached_fd is not None else {}
            rebuilt = tree_entries(rebuilt_fd) if rebuilt_fd is not None else {}
        except TreeError as e:
            return _no_verdict(v, Status.FAILED, f"the artifacts cannot be compared: {e}")
        finally:
            for fd in (cached_fd, rebuilt_fd):
                if fd is not None:
                    os.close(fd)
        found = differences(cached, rebuilt)
        compared = len(set(cached) | set(rebuilt))
        return {**v.head(), "State": "done", "Status": Status.SUCCEEDED.value,
                "Reproducible": not found, "VerifiedAt": rfc3339(datetime.now(UTC)),
                "Compared": compared, "DifferencesCount": len(found),
                "Differences": [d.to_json() for d in found[:MAX_LISTED]],
                "Summary": summary(compared, found), "Error": "", "LogTail": ""}

    def _record(self, v: Verification, folder_fd: int, answer: dict) -> None:
        """The verdict onto the cached build: its build_info.json (written through the folder
        held since the start, so a rebuild that replaced it meanwhile is never written over) and
        its index row (only while it is still the same run)."""
        info = _read_json_at(folder_fd, INFO_FILE)
        if info is None or info.get("StartedAt") != v.started_at:
            return
        fields = {"Reproducible": answer["Reproducible"], "VerifiedAt": answer["VerifiedAt"]}
        _write_json_at(folder_fd, VERIFY_FILE, answer)
        _write_json_at(folder_fd, INFO_FILE, {**info, **fields})
        self.srv.store.record_verification(v.project, v.build_id, v.started_at, fields)

    def _remove(self, work: Path) -> None:
        try:
            if os.path.lexists(work):
                self.srv.storage.remove(work)
        except Exception:  # noqa: BLE001 - the next start removes what is left
            log.exception("mistryd: could not remove the verification folder %s", work)


def _no_verdict(v: Verification, status: Status, reason: str, log_tail: str = "") -> dict:
    return {**v.head(), "State": "done", "Status": status.value, "Reproducible": None,
            "VerifiedAt": None, "Compared": 0, "DifferencesCount": 0, "Differences": [],
            "Summary": f"no verdict: the rebuild did not succeed ({reason})", "Error": reason,
            "LogTail": log_tail, "CacheFrom": None}


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def recorded_verification(folder: Path) -> dict | None:
    """The last verification's answer kept in a build folder, or None."""
    try:
        with leases.reading(folder) as fd:
            return _read_json_at(fd, VERIFY_FILE)
    except OSError:
        return None


def _read_json_at(dir_fd: int, name: str) -> dict | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            value = json.loads(f.read(1 << 24))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _write_json_at(dir_fd: int, name: str, value: dict) -> None:
    tmp = f".{name}.verify.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


# --- the build page's line ---------------------------------------------------------------------


@dataclass(frozen=True)
class PageLine:
    reproducible: bool
    summary: str  # "not reproducible: 1 of 2 artifact entries differs (stamp.txt)"
    checked: str  # RFC 3339


def page_line(folder: Path, info: Mapping) -> PageLine | None:
    """What a finished build's page says of its last verification; None: never verified."""
    reproducible = info.get("Reproducible")
    if not isinstance(reproducible, bool):
        return None
    checked = str(info.get("VerifiedAt") or "")
    recorded = recorded_verification(folder) or {}
    summary = recorded.get("Summary") if recorded.get("VerifiedAt") == checked else None
    if not isinstance(summary, str):
        summary = "reproducible" if reproducible else "not reproducible"
    return PageLine(reproducible, summary, checked)
