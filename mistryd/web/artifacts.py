"""Artifact downloads over HTTP: a manifest with sha256s, each file (with Range), or one tar.

Only finished, successful builds are served, and no path ever leaves the build's artifacts folder:
`..` is refused and a symlink is served as a link (in the manifest and the tar), never followed out.
The manifest is computed once and cached beside build_info.json; the cache is tied to the build's
ID and StartedAt, so a copy carried into a later build (incremental clone, rebuild) is not reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify, send_file

from ..errors import NotFound
from ..names import name_problem

bp = Blueprint("artifacts", __name__)

MANIFEST_FILE = "artifacts.manifest.json"
MANIFEST_VERSION = 1
CHUNK = 1 << 20


def _artifacts_root(project: str, build_id: str) -> tuple[Path, dict]:
    """(the artifacts folder, build_info) of a finished successful build, else NotFound."""
    if name_problem(project) or name_problem(build_id):
        raise NotFound(f"no build {project}/{build_id}")
    srv = current_app.extensions["mistryd"]
    info = srv.layout.read_info(project, build_id)
    if info is None or info.get("ExitCode") != 0:
        raise NotFound(f"no finished successful build {project}/{build_id}")
    return srv.layout.ready(project, build_id) / "data" / "artifacts", info


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def scan(root: Path) -> list[dict]:
    """Every entry under `root`, sorted by path: dirs, regular files (with sha256) and symlinks
    (with their target, never followed). Other file types are left out."""
    entries: list[dict] = []
    if not root.is_dir():
        return entries
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(full)
            common = {"path": rel, "mode": stat.S_IMODE(st.st_mode), "size": 0,
                      "mtime": int(st.st_mtime)}
            if stat.S_ISLNK(st.st_mode):
                entries.append({**common, "type": "symlink", "target": os.readlink(full)})
            elif stat.S_ISDIR(st.st_mode):
                entries.append({**common, "type": "dir"})
            elif stat.S_ISREG(st.st_mode):
                entries.append({**common, "type": "file", "size": st.st_size,
                                "sha256": _sha256(full)})
    entries.sort(key=lambda e: e["path"])
    return entries


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def manifest(project: str, build_id: str) -> dict:
    """The build's manifest, from the cache file when it belongs to this very build."""
    root, info = _artifacts_root(project, build_id)
    cache = root.parent.parent / MANIFEST_FILE
    stamp = {"v": MANIFEST_VERSION, "ID": info.get("ID"), "StartedAt": info.get("StartedAt")}
    cached = _read_cache(cache, stamp)
    if cached is not None:
        return cached
    with _locks_guard:  # one hashing pass per build, however many clients ask at once
        lock = _locks.setdefault(str(cache), threading.Lock())
    with lock:
        cached = _read_cache(cache, stamp)
        if cached is not None:
            return cached
        entries = scan(root)
        body = {"stamp": stamp, "project": project, "id": build_id, "entries": entries,
                "total_size": sum(e["size"] for e in entries)}
        tmp = cache.with_name(f".{MANIFEST_FILE}.{os.getpid()}.{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps(body))
            os.replace(tmp, cache)
        except OSError:  # a read-only build folder still gets its manifest, just not cached
            tmp.unlink(missing_ok=True)
    with _locks_guard:
        _locks.pop(str(cache), None)
    return body


def _read_cache(cache: Path, stamp: dict) -> dict | None:
    try:
        body = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("stamp") == stamp else None


def safe_relative(subpath: str) -> str | None:
    """`subpath` when it is a plain relative path (no '..', '.', empty parts or NUL), else None."""
    if not subpath or "\0" in subpath or subpath.startswith("/") or "\\" in subpath:
        return None
    parts = subpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    return subpath


@bp.get("/artifacts/<project>/<build_id>/")
def get_manifest(project: str, build_id: str):
    body = dict(manifest(project, build_id))
    body.pop("stamp", None)
    return jsonify(body)


@bp.get("/artifacts/<project>/<build_id>/<path:subpath>")
def get_file(project: str, build_id: str, subpath: str):
    root, _ = _artifacts_root(project, build_id)
    rel = safe_relative(subpath)
    if rel is None:
        raise NotFound(f"artifact path {subpath!r} is not a plain relative path")
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, rel))
    if not real.startswith(real_root + os.sep) or not os.path.isfile(real):
        raise NotFound(f"no artifact {rel!r} in {project}/{build_id}")
    response = send_file(real, mimetype="application/octet-stream", conditional=True,
                         etag=True, max_age=0)
    response.headers["Accept-Ranges"] = "bytes"
    return response


@bp.get("/artifacts/<project>/<build_id>.tar")
def get_tar(project: str, build_id: str):
    root, _ = _artifacts_root(project, build_id)
    entries = manifest(project, build_id)["entries"]
    return Response(_tar_stream(root, entries), mimetype="application/x-tar",
                    headers={"Content-Disposition": f"attachment; filename={build_id}.tar"})


def _tar_stream(root: Path, entries: list[dict]) -> Iterator[bytes]:
    """A tar written as it is sent: header, content, padding per entry; no temporary file."""
    for entry in entries:
        ti = tarfile.TarInfo(entry["path"])
        ti.mode = entry["mode"]
        ti.mtime = entry.get("mtime", 0)
        full = root / entry["path"]
        if entry["type"] == "dir":
            ti.type = tarfile.DIRTYPE
            yield ti.tobuf(tarfile.PAX_FORMAT)
        elif entry["type"] == "symlink":
            ti.type = tarfile.SYMTYPE
            ti.linkname = entry["target"]
            yield ti.tobuf(tarfile.PAX_FORMAT)
        else:
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            with os.fdopen(fd, "rb", buffering=0) as f:
                st = os.fstat(f.fileno())
                ti.size = st.st_size
                ti.mtime = int(st.st_mtime)
                yield ti.tobuf(tarfile.PAX_FORMAT)
                left = ti.size
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:  # shrank while we read: pad, the sha256 will tell
                        chunk = b"\0" * min(CHUNK, left)
                    left -= len(chunk)
                    yield chunk
                if ti.size % tarfile.BLOCKSIZE:
                    yield b"\0" * (tarfile.BLOCKSIZE - ti.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
