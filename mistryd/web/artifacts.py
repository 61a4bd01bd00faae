"""Artifact downloads over HTTP: a manifest with sha256s, each file (with Range), or one tar.

Only finished, successful builds are served. Everything under a build's `data/` was written by the
build and is hostile: it is read through `safe_tree` (directory descriptors, no symlink followed
on the way in, only regular files opened), so a `data/artifacts` replaced by a link to `/etc` or
`/` answers 404 and never a host file. A symlink inside the artifacts is listed as a link (in the
manifest and the tar); a single-file download follows it only while it stays inside the folder.

Every reader holds `leases.reading` on the build folder for as long as it reads (GC leaves such a
folder for its next pass), and a tar that cannot read an entry it announced is cut, never finished
short. The manifest is computed once, streamed to a cache file beside build_info.json (tied to the
build's ID and StartedAt, so a copy carried into a later build is not reused) and served from that
file as it is read, so a million-entry manifest costs the server no memory. Computing a manifest
and sending a tar take a slot of a small pool; without a free slot the answer is 503.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import struct
import sys
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wsgi import wrap_file

from .. import leases
from ..errors import BadRequest, MistryError, NotFound, Unprocessable
from ..jobs import servable
from ..layout import INFO_FILE
from ..names import name_problem
from ..safe_tree import (
    FILE_FLAGS,
    FileOpener,
    TreeError,
    TreeTooLarge,
    digests_of,
    open_dir,
    open_file,
    open_regular_at,
    read_exactly,
    walk,
)
from . import views
from .capacity import capacity

bp = Blueprint("artifacts", __name__)
log = logging.getLogger("mistryd")

MANIFEST_FILE = "artifacts.manifest.json"
COLUMNS_FILE = "artifacts.columns.json"  # the same manifest in columns (see _write_columns)
MANIFEST_VERSION = 3  # 2: one entry per line, streamed from the file; 3: blake3 beside sha256
MAX_ENTRIES = 1_000_000  # ~150 MB of manifest; more is a job for rsync
MAX_DEPTH = 128
MAX_INFO_BYTES = 1 << 20

_locks: dict[str, threading.Lock] = {}  # per build: one manifest computation at a time
_locks_guard = threading.Lock()


class ArtifactStreamBroken(RuntimeError):
    """Raised inside a tar stream: the server cuts the connection without the tar's end."""


@dataclass(frozen=True)
class _Build:
    label: str  # "project/id": what messages name, never the folder on the host
    info: dict
    folder_fd: int  # ready/<id>, held with leases.reading
    artifacts_fd: int  # data/artifacts, a real directory below it


def _open_build(stack: contextlib.ExitStack, project: str, build_id: str) -> _Build:
    """Hold a finished successful build for reading (released when `stack` closes), else 404."""
    label = f"{project}/{build_id}"
    if name_problem(project) or name_problem(build_id):
        raise NotFound(f"no build {label}")
    return _hold_build(stack, current_app.extensions["mistryd"].layout.ready(project, build_id),
                       label)


def _hold_build(stack: contextlib.ExitStack, folder: Path, label: str) -> _Build:
    try:
        folder_fd = stack.enter_context(leases.reading(folder))
    except OSError:
        raise NotFound(f"no finished successful build {label}") from None
    info = _read_info(folder_fd)
    if info is None or not servable(info):  # a refused build keeps its ExitCode 0
        raise NotFound(f"no finished successful build {label}")
    try:
        artifacts_fd = open_dir(folder_fd, "data/artifacts")
    except TreeError:
        raise NotFound(f"build {label} has no artifacts: its data/artifacts is missing or not a "
                       "real directory") from None
    stack.callback(os.close, artifacts_fd)
    return _Build(label, info, folder_fd, artifacts_fd)


def _read_info(folder_fd: int) -> dict | None:
    """The build_info.json of the folder we hold (not of whatever the path names by now)."""
    try:
        fd = open_regular_at(folder_fd, INFO_FILE)
    except TreeError:
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_INFO_BYTES + 1)
    try:
        info = json.loads(raw) if len(raw) <= MAX_INFO_BYTES else None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


# --- the manifest: computed once into a file, served from it --------------------------------------
#
# The cache file is one JSON document laid out in lines, so that it can be checked and served
# without parsing it: the answer is a byte range of the file, sent by the WSGI server's file
# wrapper straight from disk (a generator's output would be buffered by waitress in memory).
#   {"stamp":{...},"manifest":
#   {"project":"p","id":"i","entries":[
#   {entry}
#   ,{entry}
#   ],"total_size":123}
#   }
# A build past the limits has `{"refused":"<message>"}` as its manifest instead.

_STAMP_END = b',"manifest":\n'
_FILE_END = b"}\n"


@dataclass
class _Manifest:
    """An open manifest cache file and where the answer lies in it: [start, end)."""

    file: BinaryIO
    start: int
    end: int

    def close(self) -> None:
        self.file.close()


def _stamp(build: _Build) -> dict:
    return {"v": MANIFEST_VERSION, "ID": build.info.get("ID"),
            "StartedAt": build.info.get("StartedAt"), "limits": [MAX_ENTRIES, MAX_DEPTH]}


def _manifest_file(build: _Build, slot_held: bool) -> _Manifest:
    """The build's manifest, computed when not cached; Unprocessable when the build is past
    the limits. The caller closes it."""
    return _cached(build, MANIFEST_FILE, slot_held, lambda stamp: _compute(build, stamp))


def _columns_file(build: _Build) -> _Manifest:
    """The build's manifest in columns (see _write_columns), made from the manifest when not
    cached. The caller closes it."""
    def compute(stamp: dict) -> _Manifest:
        manifest = _manifest_file(build, slot_held=True)
        try:
            return _written(build, COLUMNS_FILE, stamp, lambda out: _write_columns(out, manifest,
                                                                                  build))
        finally:
            manifest.close()

    return _cached(build, COLUMNS_FILE, False, compute)


def _cached(build: _Build, name: str, slot_held: bool,
            compute: Callable[[dict], _Manifest]) -> _Manifest:
    """The cache file `name` of the build when it was made for this very build, else made by
    `compute(stamp)`: once per build however many clients ask at once, in a slot of the pool."""
    stamp = _stamp(build)
    cached = _open_cached(build, name, stamp)
    if cached is not None:
        return cached
    with _locks_guard:
        lock = _locks.setdefault(f"{build.label}/{name}", threading.Lock())
    try:
        with lock:
            cached = _open_cached(build, name, stamp)
            if cached is not None:
                return cached
            with contextlib.nullcontext() if slot_held else capacity().artifacts.slot():
                return compute(stamp)
    finally:
        with _locks_guard:
            _locks.pop(f"{build.label}/{name}", None)


def _open_cached(build: _Build, name: str, stamp: dict) -> _Manifest | None:
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=build.folder_fd)
    except OSError:
        return None
    f = os.fdopen(fd, "rb")
    manifest = _checked(f, build, stamp) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    if manifest is None:
        f.close()
    return manifest


def _checked(f: BinaryIO, build: _Build, stamp: dict) -> _Manifest | None:
    """The manifest in `f` when it is complete and was made for this very build, else None."""
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    line = f.readline(1 << 16)
    try:
        head = json.loads(line[:-len(_STAMP_END)] + b"}") if line.endswith(_STAMP_END) else None
    except ValueError:
        return None
    if not isinstance(head, dict) or head.get("stamp") != stamp:
        return None
    f.seek(size - len(_FILE_END))
    if f.read() != _FILE_END:
        return None
    manifest = _Manifest(f, len(line), size - len(_FILE_END))
    _raise_if_refused(manifest, build)
    return manifest


def _raise_if_refused(manifest: _Manifest, build: _Build) -> None:
    manifest.file.seek(manifest.start)
    line = manifest.file.readline(1 << 16)
    manifest.file.seek(manifest.start)
    if line.startswith(b'{"refused"'):
        manifest.close()
        try:
            message = json.loads(line)["refused"]
        except (ValueError, KeyError):
            message = "has too many artifacts"
        raise Unprocessable(f"build {build.label} {message}; fetch its artifacts with rsync")


def _compute(build: _Build, stamp: dict) -> _Manifest:
    def body(out: BinaryIO) -> None:
        start = out.tell()
        try:
            _write_body(out, build)
        except TreeTooLarge as e:
            out.seek(start)
            out.truncate()
            message = (f"has more than {MAX_ENTRIES} artifact entries or nests them deeper than "
                       f"{MAX_DEPTH} levels ({e})")
            out.write(_json({"refused": message}) + b"\n")

    return _written(build, MANIFEST_FILE, stamp, body)


def _written(build: _Build, name: str, stamp: dict, body: Callable[[BinaryIO], None]) -> _Manifest:
    """The cache file `name` written anew (the stamp's line, `body(out)`, the end), kept when the
    build folder takes it, and open."""
    out, tmp_name = _new_cache_file(build.folder_fd, name)
    try:
        out.write(_json({"stamp": stamp})[:-1] + _STAMP_END)
        body(out)
        out.write(_FILE_END)
        out.flush()
        if tmp_name is not None:
            _publish(build.folder_fd, tmp_name, name)
        manifest = _checked(out, build, stamp)
    except TreeError as e:
        _discard(out, build.folder_fd, tmp_name)
        raise Unprocessable(f"the artifacts of {build.label} cannot be read: {e}") from None
    except BaseException:
        _discard(out, build.folder_fd, tmp_name)
        raise
    assert manifest is not None, "a manifest just written is complete"
    return manifest


def _write_body(out: BinaryIO, build: _Build) -> None:
    project, build_id = build.label.split("/", 1)
    out.write(_json({"project": project, "id": build_id})[:-1] + b',"entries":[\n')
    total = 0
    for n, found in enumerate(walk(build.artifacts_fd, MAX_ENTRIES, MAX_DEPTH)):
        entry = {"path": found.path, "mode": found.mode, "size": found.size,
                 "mtime": found.mtime, "type": found.type}
        if found.type == "symlink":
            entry["target"] = found.target
        elif found.type == "file":
            fd = open_regular_at(found.dir_fd, found.name, found.path)
            try:
                entry["sha256"], entry["blake3"] = digests_of(fd, found.size, found.path)
            finally:
                os.close(fd)
            total += found.size
        out.write((b"," if n else b"") + _json(entry) + b"\n")
    out.write(b'],"total_size":' + str(total).encode() + b"}\n")


# The manifest in columns (`?form=columns`), for a client that reads many entries: one list per
# field, in the entries' order ("" where an entry has no such field: a directory's sha256, a file's
# link target), and the entry count. Decoding it takes under half the time of the entries (no
# dict per entry), and checking it a few scans. Written from the manifest file a batch of entries at a
# time through one spool file per column, so that a large manifest costs no memory either.
COLUMNS = ("path", "type", "mode", "size", "mtime", "sha256", "blake3", "target")
COLUMN_BATCH = 4096


def _write_columns(out: BinaryIO, manifest: _Manifest, build: _Build) -> None:
    project, build_id = build.label.split("/", 1)
    with contextlib.ExitStack() as stack:
        spools = {name: stack.enter_context(tempfile.TemporaryFile()) for name in COLUMNS}
        batch: list[dict] = []
        count = total = 0

        def spool_batch() -> None:
            for name, spool in spools.items():
                values = _json([entry.get(name, "") for entry in batch])[1:-1]
                spool.write(b"," + values if spool.tell() else values)  # after an earlier batch
            batch.clear()

        for entry in _manifest_entries(manifest, build.label):
            batch.append(entry)
            count += 1
            if entry["type"] == "file":
                total += entry["size"]
            if len(batch) == COLUMN_BATCH:
                spool_batch()
        if batch:
            spool_batch()
        out.write(_json({"project": project, "id": build_id, "count": count,
                         "total_size": total})[:-1])
        for name, spool in spools.items():
            out.write(b',"%s":[' % name.encode())
            spool.seek(0)
            shutil.copyfileobj(spool, out)
            out.write(b"]")
        out.write(b"}\n")


def _json(value: object) -> bytes:
    # ensure_ascii: no raw newline or other control character can split an entry's line
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode()


def _new_cache_file(folder_fd: int, name: str) -> tuple[BinaryIO, str | None]:
    """A file to write the cache file `name` into: a temporary name in the build folder, or an
    anonymous file when the folder is read-only (the manifest is served, just not cached)."""
    name = f".{name}.{os.getpid()}.{threading.get_ident()}"
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.fdopen(os.open(name, flags, 0o644, dir_fd=folder_fd), "w+b", 1 << 16), name
    except OSError:
        return tempfile.TemporaryFile(), None  # noqa: SIM115 - returned open, closed by the caller


def _publish(folder_fd: int, tmp_name: str, name: str) -> None:
    try:
        os.replace(tmp_name, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except OSError:
        _unlink(folder_fd, tmp_name)


def _discard(out: BinaryIO, folder_fd: int, tmp_name: str | None) -> None:
    out.close()
    if tmp_name is not None:
        _unlink(folder_fd, tmp_name)


def _unlink(folder_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=folder_fd)


def _manifest_entries(manifest: _Manifest, label: str) -> Iterator[dict]:
    """The entries of a manifest file, one line at a time."""
    f = manifest.file
    f.seek(manifest.start)
    f.readline()  # {"project", "id", "entries":[
    for line in f:
        if line.startswith(b"]"):
            return
        yield json.loads(line[1:] if line.startswith(b",") else line)
    raise ArtifactStreamBroken(f"the manifest of {label} ends early")


MANIFEST_FORMS = ("entries", "columns")


@bp.get("/artifacts/<project>/<build_id>/")
def get_manifest(project: str, build_id: str):
    form = request.args.get("form", "entries")
    if form not in MANIFEST_FORMS:
        raise BadRequest(f"form={form!r}: the manifest comes as {' or '.join(MANIFEST_FORMS)}")
    page = form == "entries" and views.wants_page()
    with contextlib.ExitStack() as stack:
        build = _open_build(stack, project, build_id)
        tag = _manifest_tag(build)
        if not page and request.if_none_match.contains(tag):  # the client holds this one
            return Response(status=304, headers={"ETag": f'"{tag}"'})
        manifest = _columns_file(build) if form == "columns" \
            else _manifest_file(build, slot_held=False)
    # the open file stays readable after the lease is gone: a rebuild or GC cannot change it
    manifest.file.seek(manifest.start)
    response = Response(wrap_file(request.environ, manifest.file), mimetype="application/json",
                        direct_passthrough=True)
    response.content_length = manifest.end - manifest.start  # the file's last line is not sent
    if page:  # a browser: the same manifest as a page
        return views.manifest_page(project, build_id, response)
    response.set_etag(tag)
    return response


def _manifest_tag(build: _Build) -> str:
    """The manifest's ETag. Its stamp (the build's ID and start, the manifest format's version
    and limits) names one manifest for good: a build rebuilt under the same ID starts anew."""
    return hashlib.sha256(_json(_stamp(build))).hexdigest()[:32]


# --- one file -----------------------------------------------------------------------------------


def safe_relative(subpath: str) -> str | None:
    """`subpath` when it is a plain relative path (no '..', '.', empty parts or NUL), else None."""
    if not subpath or "\0" in subpath or subpath.startswith("/") or "\\" in subpath:
        return None
    parts = subpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return subpath


class _HeldFile(io.FileIO):
    """An artifact's open file that releases the build's lease when the server closes it (after
    the last byte is sent, or when the client goes away)."""

    def __init__(self, fd: int, on_close: Callable[[], None]):
        super().__init__(fd, "rb", closefd=True)
        self._on_close = on_close

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._on_close()


@bp.get("/artifacts/<project>/<build_id>/<path:subpath>")
def get_file(project: str, build_id: str, subpath: str):
    rel = safe_relative(subpath)
    if rel is None:
        raise NotFound(f"artifact path {subpath!r} is not a plain relative path")
    stack = contextlib.ExitStack()
    try:
        build = _open_build(stack, project, build_id)
        try:
            fd = open_file(build.artifacts_fd, rel, follow_inner_links=True)
        except TreeError:
            raise NotFound(f"no artifact {rel!r} in {build.label}") from None
        held = _HeldFile(fd, stack.close)
    except BaseException:
        stack.close()
        raise
    try:
        return _file_response(held, f"{build.label}/{rel}")
    except BaseException:
        held.close()
        raise


def _file_response(f: _HeldFile, label: str) -> Response:
    st = os.fstat(f.fileno())
    response = Response(wrap_file(request.environ, f), mimetype="application/octet-stream",
                        direct_passthrough=True)
    response.content_length = st.st_size
    response.last_modified = datetime.fromtimestamp(st.st_mtime, UTC)
    response.cache_control.no_cache = True
    response.cache_control.max_age = 0
    response.expires = datetime.now(UTC)
    response.set_etag(f"{st.st_mtime}-{st.st_size}-{zlib.adler32(label.encode()) & 0xFFFFFFFF}")
    try:
        response.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)
    except RequestedRangeNotSatisfiable:
        f.close()
        raise
    response.headers["Accept-Ranges"] = "bytes"
    return response


# --- the tar --------------------------------------------------------------------------------------
#
# The tar is sent in manifest order, in writes of about TAR_WRITE bytes: for a tree of many small
# files the cost is per entry (a header, an open, a read), so headers are packed by hand (a plain
# ustar header; tarfile's PAX writer only for what ustar cannot hold: long or non-ASCII names,
# sizes of 8 GiB and more) and a small file is read with one read into the write buffer. Its
# bytes depend only on the manifest and the files' contents, so two requests get the same tar.
# `?start=N` begins at the manifest's entry N (0-based): how `mistry` resumes a stream that broke.

TAR_WRITE = 1 << 20
BLOCK = tarfile.BLOCKSIZE
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_TAR_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
_OCTAL_12 = 8 ** 11  # what 11 octal digits hold


@bp.get("/artifacts/<project>/<build_id>.tar")
def get_tar(project: str, build_id: str):
    start, stop = _entry_index("start") or 0, _entry_index("stop")
    stack = contextlib.ExitStack()
    try:
        build = _open_build(stack, project, build_id)
        cached = _open_tar_cache(build, start, stop)
        if cached is not None:  # sent by the WSGI server with sendfile: no thread, no slot
            fd, length = cached
            held = _HeldFile(fd, stack.close)
            return _tar_response(Response(wrap_file(request.environ, held),
                                          direct_passthrough=True), build_id, length)
        stack.enter_context(capacity().artifacts.slot())
        manifest = _manifest_file(build, slot_held=True)
        stack.callback(manifest.close)
        _keep_tar_later(project, build_id)
        response = _tar_response(Response(_tar_stream(manifest, build, start, stop)), build_id)
        response.call_on_close(stack.close)  # the lease and the slot last as long as the stream
    except BaseException:
        stack.close()
        raise
    return response


def _entry_index(name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 9:
        raise BadRequest(f"{name}={value!r}: give the index of a manifest entry (0, 1, ...)")
    return int(value)


def _tar_response(response: Response, build_id: str, length: int | None = None) -> Response:
    response.mimetype = "application/x-tar"
    response.headers["Content-Disposition"] = f"attachment; filename={build_id}.tar"
    if length is not None:
        response.content_length = length
    return response


def _tar_stream(manifest: _Manifest, build: _Build, start: int = 0, stop: int | None = None,
                offsets: array.array | None = None) -> Iterator[bytes]:
    """A tar written as it is sent, entry by entry in the manifest's order, from entry `start`;
    with `stop`, the entries before it and no end blocks (a part of the tar for a client that
    fetches in parallel). An entry that cannot be read as announced cuts the stream (no end
    blocks): a client never gets a well-formed tar that silently lacks files. What was read
    before it is still sent. `offsets` gets where each entry's header starts in the stream."""
    out = bytearray()
    sent = 0
    with FileOpener(build.artifacts_fd) as opener:
        try:
            for n, entry in enumerate(_manifest_entries(manifest, build.label)):
                if n < start:
                    continue
                if stop is not None and n >= stop:
                    yield bytes(out)
                    return
                if offsets is not None:
                    offsets.append(sent + len(out))
                if entry["type"] != "file":
                    out += _tar_header(entry, 0)
                else:
                    for chunk in _tar_file(opener, entry, build.label, out):
                        sent += len(chunk)
                        yield chunk
                if len(out) >= TAR_WRITE:
                    sent += len(out)
                    yield bytes(out)
                    out.clear()
        except ArtifactStreamBroken:
            if out:
                yield bytes(out)
            raise
    if offsets is not None:
        offsets.append(sent + len(out))
    out += b"\0" * (2 * BLOCK)
    yield bytes(out)


def _tar_file(opener: FileOpener, entry: dict, label: str, out: bytearray) -> Iterator[bytes]:
    """Appends the file's header and, when it is small, its bytes to `out`; a large one is sent
    in chunks of its own (after what `out` holds)."""
    path, size = entry["path"], entry["size"]
    try:
        fd = opener.open(path)
    except TreeError as e:
        raise _broken(label, str(e)) from None
    try:
        if os.fstat(fd).st_size != size:
            raise _broken(label, f"{path} changed size since its manifest was made")
        out += _tar_header(entry, size)
        try:
            if size <= TAR_WRITE:
                data = os.read(fd, size) if size else b""
                out += data
                if len(data) < size:  # a short read: the file shrank, or a read of its own
                    for chunk in read_exactly(fd, size - len(data), path):
                        out += chunk
            else:
                yield bytes(out)
                out.clear()
                yield from read_exactly(fd, size, path)
        except TreeError as e:
            raise _broken(label, str(e)) from None
        if size % BLOCK:
            out += bytes(BLOCK - size % BLOCK)
    finally:
        os.close(fd)


# --- the tar cache ----------------------------------------------------------------------------
#
# For a tree of many small files the tar costs the server a few system calls per file. The first
# `.tar` request of a build is streamed from the files, and starts a background thread that
# writes the whole tar beside build_info.json (`artifacts.tar`, as large as the artifacts,
# counted by the garbage collector) with an index of where each manifest entry's header starts
# (`artifacts.tar.index`: a JSON line with the manifest's stamp and the entry count, then one
# little-endian uint64 per entry and one for the end blocks). Later requests, any `start` and
# `stop`, are a range of that file sent with sendfile: the same bytes as a stream.

TAR_CACHE = "artifacts.tar"
TAR_INDEX = "artifacts.tar.index"


class _TarCache:
    """The tar cache of one build being written (into temporary names, kept by `finish`)."""

    def __init__(self, build: _Build, tar: BinaryIO, suffix: str):
        self.build = build
        self.tar = tar
        self.tar_tmp, self.index_tmp = f".{TAR_CACHE}{suffix}", f".{TAR_INDEX}{suffix}"

    @classmethod
    def create(cls, build: _Build) -> _TarCache | None:
        """None when the build folder is read-only (nothing is kept)."""
        suffix = f".{os.getpid()}.{threading.get_ident()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(f".{TAR_CACHE}{suffix}", flags, 0o644, dir_fd=build.folder_fd)
        except OSError:
            return None
        return cls(build, os.fdopen(fd, "wb", 1 << 20), suffix)

    def write(self, manifest: _Manifest) -> None:
        """The whole tar, then its index; the tar first (an index names the tar's size, so a
        tar without its index, or a stale index, is never served). OSError: nothing kept."""
        offsets = array.array("Q")
        try:
            for chunk in _tar_stream(manifest, self.build, 0, None, offsets):
                self.tar.write(chunk)
            self.tar.close()
            head = _json({"stamp": _stamp(self.build), "entries": len(offsets) - 1,
                          "size": offsets[-1] + 2 * BLOCK}) + b"\n"
            folder = self.build.folder_fd
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(self.index_tmp, flags, 0o644, dir_fd=folder), "wb") as f:
                f.write(head + _little_endian(offsets).tobytes())
            os.replace(self.tar_tmp, TAR_CACHE, src_dir_fd=folder, dst_dir_fd=folder)
            os.replace(self.index_tmp, TAR_INDEX, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            self.tar.close()
            _unlink(self.build.folder_fd, self.tar_tmp)
            _unlink(self.build.folder_fd, self.index_tmp)
            raise


_keeping: set[str] = set()  # builds whose tar cache is being written, or waits to be
_one_at_a_time = threading.Semaphore(1)  # one tar is written at a time, beside the requests


def _keep_tar_later(project: str, build_id: str) -> None:
    """Write the build's tar cache in a background thread (once; the stream that asked goes on
    from the files), so that the next fetch of it is a sendfile."""
    label = f"{project}/{build_id}"
    with _locks_guard:
        if label in _keeping:
            return
        _keeping.add(label)
    srv = current_app.extensions["mistryd"]
    folder = srv.layout.ready(project, build_id)
    threading.Thread(target=_keep_tar, args=(srv.store, folder, label), daemon=True,
                     name=f"tar-cache {label}").start()


def _keep_tar(store: Any, folder: Path, label: str) -> None:
    try:
        with _one_at_a_time, contextlib.ExitStack() as stack:
            build = _hold_build(stack, folder, label)
            if _open_tar_cache(build, 0, None) is not None:
                return  # another process kept it meanwhile
            manifest = _manifest_file(build, slot_held=True)
            stack.callback(manifest.close)
            cache = _TarCache.create(build)
            if cache is None:
                return
            cache.write(manifest)
        project, build_id = label.split("/", 1)
        store.remeasure(project, build_id)  # the garbage collector: the folder grew
    except (OSError, MistryError, ArtifactStreamBroken) as e:
        log.warning("the tar of %s was not kept: %s", label, getattr(e, "message", e))
    finally:
        with _locks_guard:
            _keeping.discard(label)


def _little_endian(offsets: array.array) -> array.array:
    if sys.byteorder == "big":
        offsets = array.array("Q", offsets)
        offsets.byteswap()
    return offsets


def _open_tar_cache(build: _Build, start: int, stop: int | None) -> tuple[int, int] | None:
    """The build's kept tar, open and positioned at entry `start` (past the end: at the end
    blocks), and the bytes to send: to entry `stop`, or to the end. None when there is no tar
    for this very build."""
    try:
        fd = os.open(TAR_INDEX, FILE_FLAGS, dir_fd=build.folder_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            head = json.loads(f.readline(1 << 16))
        except ValueError:
            return None
        if not isinstance(head, dict) or head.get("stamp") != _stamp(build):
            return None
        offsets = array.array("Q")
        offsets.frombytes(f.read())
    offsets = _little_endian(offsets)
    if len(offsets) != head.get("entries", -1) + 1:
        return None
    try:
        tar = os.open(TAR_CACHE, FILE_FLAGS, dir_fd=build.folder_fd)
    except OSError:
        return None
    st = os.fstat(tar)
    if not stat.S_ISREG(st.st_mode) or st.st_size != head.get("size"):
        os.close(tar)
        return None
    last = len(offsets) - 1
    begin = offsets[min(start, last)]
    end = offsets[stop] if stop is not None and stop < last else st.st_size
    os.lseek(tar, begin, os.SEEK_SET)
    return tar, max(end - begin, 0)


def _tar_header(entry: dict, size: int) -> bytes:
    """The entry's tar header: ustar packed by hand, or tarfile's PAX header when it does not fit."""
    path, kind = entry["path"], entry["type"]
    target = entry.get("target") or ""
    mtime = entry.get("mtime", 0)
    name, prefix = _ustar_name(path)
    if name is None or len(target) > 100 or not target.isascii() or size >= _OCTAL_12 \
            or not 0 <= mtime < _OCTAL_12:
        return _pax_header(entry, size)
    fields = [name, b"%07o\0" % entry["mode"], b"0000000\0", b"0000000\0", b"%011o\0" % size,
              b"%011o\0" % mtime, b" " * 8, _TAR_TYPES[kind], target.encode(), b"ustar\x0000",
              b"", b"", b"0000000\0", b"0000000\0", prefix]
    header = bytearray(_USTAR.pack(*fields))
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _ustar_name(path: str) -> tuple[bytes | None, bytes]:
    """(name, prefix) of a path ustar can hold (ASCII, name <= 100, prefix <= 155), else None."""
    if not path.isascii():
        return None, b""
    raw = path.encode()
    if len(raw) <= 100:
        return raw, b""
    cut = raw.find(b"/", len(raw) - 101)
    if cut <= 0 or cut > 155:
        return None, b""
    return raw[cut + 1:], raw[:cut]


def _pax_header(entry: dict, size: int) -> bytes:
    info = tarfile.TarInfo(entry["path"])
    info.mode = entry["mode"]
    info.mtime = entry.get("mtime", 0)
    info.type = _TAR_TYPES[entry["type"]]
    info.size = size
    if entry["type"] == "symlink":
        info.linkname = entry["target"]
    return info.tobuf(tarfile.PAX_FORMAT)


def _broken(label: str, problem: str) -> ArtifactStreamBroken:
    log.warning("cutting the .tar of %s: %s", label, problem)
    return ArtifactStreamBroken(f"the .tar of {label} was cut: {problem}")
