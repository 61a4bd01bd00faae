"""Where a remote builder's results arrive on the central server (docs/distributed.md).

A builder sends its live log and then its finished build folder (a tar) in pieces, each at the
offset it believes the file has (resumable: a piece at the wrong offset is refused with the
right one). When the whole tar is there, `land` checks its size and sha256, extracts it into a
landing folder as hostile input (no names outside it, no device files, no hard links out, no
setuid bits; then the same defusing as a container's leftovers), rewrites its record for this
server, and only then, if the builder still holds the job's lease, moves it into `ready/`
atomically and finishes the job in the queue under that lease. Until that move the build is not
served; a lease lost meanwhile (the job went to another builder) lands nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .errors import Conflict, MistryError, Unprocessable
from .explain import cache_source
from .jobs import BuildInfo, public_params
from .layout import INFO_FILE, LOG_FILE, publish, write_json_atomically
from .outputs import check_data_dirs, sanitize
from .queue import JobKey, Lease, LeaseLost, Outcome, builder_of
from .store import Status

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("mistryd")
RESULT_FILE = "result.tar"


class WrongOffset(MistryError):
    """A piece sent at another offset than the file's size: the sender resends from `size`."""

    status = 409

    def __init__(self, what: str, size: int):
        super().__init__(f"the {what} has {size} bytes; send the piece at offset {size}")
        self.size = size


@dataclass
class Landing:
    server: Server

    # --- whose job ----------------------------------------------------------------------------

    def lease(self, project: str, build_id: str, builder: str, token: int) -> Lease:
        """The job's lease, when `builder` holds it under take `token`; Conflict otherwise."""
        lease = self.server.queue.lease_of(JobKey(project, build_id))
        if lease is None or lease.builder != builder or lease.token != token:
            raise Conflict(f"the lease of build {project}/{build_id} is not held by {builder} "
                           f"(take {token}): the job ended or went to another builder")
        return lease

    # --- pieces -------------------------------------------------------------------------------

    def append_log(self, lease: Lease, offset: int, body: IO[bytes]) -> int:
        """The next piece of a running build's log, where every API process follows it (the
        log file of a local build: pending/<id>/out.log, noted in the queue)."""
        path = self.server.layout.pending(lease.key.project, lease.key.id) / LOG_FILE
        if self.server.queue.log_file(lease.key) is not None:
            return _append(path, offset, body, "log")
        # this take's first piece (a take starts with no log noted): what is there is the log of
        # an earlier take of the job, whose builder was lost; this take's log replaces it
        if offset != 0:
            raise WrongOffset("log", 0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        size = _append(path, 0, body, "log")
        st = os.stat(path)
        self.server.queue.note_log(lease, f"{st.st_dev}:{st.st_ino}")
        return size

    def append_result(self, lease: Lease, offset: int, body: IO[bytes]) -> int:
        if offset == 0:
            self.sweep()
        return _append(self._folder(lease) / RESULT_FILE, offset, body, "result")

    def _root(self) -> Path:
        return self.server.layout.state_dir() / "landing"

    def _folder(self, lease: Lease) -> Path:
        """The landing folder of this take of the job (a new take starts afresh)."""
        return self._root() / lease.key.project / f"{lease.key.id}.{lease.token}"

    def sweep(self) -> list[Path]:
        """Remove the landing folders of takes whose lease is gone (a builder lost or stopped
        mid-upload, a job ended or taken again): nothing can be added to them or land from them
        any more. Run as every upload begins; the folders removed."""
        removed = []
        for folder in self._root().glob("*/*.*"):
            build_id, _, token = folder.name.rpartition(".")
            lease = self.server.queue.lease_of(JobKey(folder.parent.name, build_id))
            if lease is not None and str(lease.token) == token:
                continue
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not while one lands from it
            except BlockingIOError:
                continue
            else:
                self._discard(folder)
                removed.append(folder)
            finally:
                os.close(fd)
        return removed

    def _discard(self, folder: Path) -> None:
        build = folder / "build"
        try:
            if os.path.lexists(build):
                self.server.storage.remove(build)  # a Btrfs subvolume: not for rmtree
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # --- the landing --------------------------------------------------------------------------

    def land(self, lease: Lease, size: int, sha256: str) -> BuildInfo:
        """Check, extract, publish and finish the uploaded build; its record."""
        folder = self._folder(lease)
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise WrongOffset("result", 0) from None
        try:
            # one landing of this take at a time, in any API process: a builder whose answer
            # timed out asks again while the first call still unpacks; that one waits here and
            # then finds the job finished (or the upload refused), not a folder half unpacked
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.lease(lease.key.project, lease.key.id, lease.builder, lease.token)
            return self._land(lease, folder, size, sha256)
        finally:
            os.close(fd)

    def _land(self, lease: Lease, folder: Path, size: int, sha256: str) -> BuildInfo:
        started = time.monotonic()
        tar = folder / RESULT_FILE
        try:
            got = tar.stat().st_size
        except FileNotFoundError:
            got = 0
        if got < size:
            raise WrongOffset("result", got)
        build = folder / "build"
        storage = self.server.storage
        try:  # from here on, whatever refuses the upload leaves nothing of it behind
            if got > size:
                raise Unprocessable(f"the result has {got} bytes, more than the {size} "
                                    "announced: nothing was kept; upload it again")
            if _sha256(tar) != sha256.lower():
                raise Unprocessable("the result's sha256 does not match: nothing was kept; "
                                    "upload it again")
            if os.path.lexists(build):
                storage.remove(build)
            storage.create(build)
            _extract(tar, build)
            info = self._checked_record(lease, build)
            os.unlink(tar)
            self.lease(lease.key.project, lease.key.id, lease.builder, lease.token)  # still held?
        except Exception:
            self._discard(folder)
            raise
        status = Status(info.Status)
        ready = self.server.layout.ready(lease.key.project, lease.key.id)
        replaced = publish(build, ready)
        self.server.builder.after_publish(lease.key.project, info.Group, ready, replaced, status)
        try:
            self.server.queue.finish(lease, Outcome(status, info.to_json(), info.ErrBuild))
        except LeaseLost:
            raise Conflict(f"build {lease.key} went to another builder while it landed") from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        storage.remove(self.server.layout.pending(lease.key.project, lease.key.id))
        builder = builder_of(lease.builder) or ""
        metrics = self.server.metrics
        metrics.upload_bytes.labels(builder).inc(size)
        metrics.upload_seconds.labels(builder).observe(time.monotonic() - started)
        metrics.builds_by_builder.labels(builder).inc()
        metrics.builds_finished.labels(lease.key.project).inc()
        log.info("mistryd: build %s/%s %s on builder %s (%d bytes landed)", lease.key.project,
                 lease.key.id, status.value, builder, size)
        return info

    def _checked_record(self, lease: Lease, build: Path) -> BuildInfo:
        """The uploaded build_info.json, checked against the job and rewritten for this server
        (its artifacts' path here, its builder); the data folder defused."""
        data = build / "data"
        if not data.is_dir() or data.is_symlink():
            raise Unprocessable("the result has no data folder")
        if problems := check_data_dirs(data):
            raise Unprocessable(f"the result is refused: {'; '.join(problems)}")
        sanitize(data)
        try:
            raw = json.loads((build / INFO_FILE).read_bytes())
            info = BuildInfo.from_json(raw)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise Unprocessable(f"the result's {INFO_FILE} is not a build record ({e})") from None
        if (info.Project, info.ID) != (lease.key.project, lease.key.id):
            raise Unprocessable(f"the result is the record of {info.Project}/{info.ID}, not of "
                                f"{lease.key.project}/{lease.key.id}")
        try:
            if not Status(info.Status).finished:
                raise ValueError
        except ValueError:
            raise Unprocessable(f"the result's status {info.Status!r} is not an end") from None
        # what names the build is this server's word, not the builder's: above all, no
        # opaque ('_', secret) param may reach the index, the pages or an answer
        info.Params = public_params(lease.request.get("params") or {})
        info.Group = lease.request.get("group", "")
        info.URL = f"job/{info.Project}/{info.ID}"
        info.Path = str(self.server.layout.ready(info.Project, info.ID) / "data" / "artifacts")
        info.Builder = builder_of(lease.builder) or ""
        if info.CacheFrom is not None:  # only the names of a build, checked as names
            source = cache_source({"CacheFrom": info.CacheFrom})
            info.CacheFrom = None if source is None else dict(zip(("Project", "Group", "ID"),
                                                                  source, strict=True))
        write_json_atomically(build / INFO_FILE, info.to_json())
        return info


def _append(path: Path, offset: int, body: IO[bytes], what: str) -> int:
    """Write `body` at the end of `path` when the file has exactly `offset` bytes; its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
    try:
        size = os.fstat(fd).st_size
        if size != offset:
            raise WrongOffset(what, size)
        while chunk := body.read(1 << 20):
            os.write(fd, chunk)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def hostile_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """A tarfile `filter` for what comes from another machine: no device files or fifos
    (dropped), and tarfile's `tar` filter (no absolute names, nothing outside `dest`, also
    through a link extracted before; setuid, setgid and sticky bits dropped). Hard links must
    name a file inside `dest` once resolved: the `tar` filter does not look at their targets, and
    a hard link through a symbolic link extracted before (`l -> /etc`, then `h` => `l/shadow`)
    would otherwise link, chown and chmod any file of this machine's file system. Symbolic links
    are kept as they are: mistryd never follows a link in a build folder."""
    if member.isdev() or member.isfifo():
        return None
    if os.path.isabs(member.name) or ".." in Path(member.name).parts:
        raise Unprocessable(f"the entry {member.name!r} points outside")
    if member.islnk():
        root = os.path.realpath(dest)
        target = os.path.realpath(os.path.join(root, member.linkname))
        if os.path.isabs(member.linkname) or os.path.commonpath([root, target]) != root:
            raise Unprocessable(f"the hard link {member.name!r} points outside")
    return tarfile.tar_filter(member, dest)


def _extract(tar: Path, dest: Path) -> None:
    try:
        with tarfile.open(tar, "r:") as archive:
            archive.extractall(dest, filter=hostile_member)
    except (tarfile.TarError, OSError) as e:
        raise Unprocessable(f"the result could not be unpacked: {e}") from None
