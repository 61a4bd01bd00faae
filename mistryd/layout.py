"""The upstream-compatible disk layout under build_path, and the atomic moves on it.

    <build_path>/<project>/pending/<id>/       a build in progress
    <build_path>/<project>/ready/<id>/         a finished build (success or failure)
        data/params/<key>  data/artifacts/  data/cache/  out.log  build_info.json
    <build_path>/<project>/latest              -> ready/<id>: last good build without a group
    <build_path>/<project>/groups/<group>      -> ../ready/<id>: last good build of a group
    <build_path>/.mistryd/                     our own state (SQLite index); never a project name
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import threading
from pathlib import Path

STATE_DIR = ".mistryd"
INFO_FILE = "build_info.json"
LOG_FILE = "out.log"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class Layout:
    def __init__(self, build_path: Path):
        self.root = Path(build_path)

    def project(self, project: str) -> Path:
        return self.root / project

    def pending(self, project: str, build_id: str) -> Path:
        return self.root / project / "pending" / build_id

    def ready(self, project: str, build_id: str) -> Path:
        return self.root / project / "ready" / build_id

    def pointer(self, project: str, group: str) -> Path:
        if group:
            return self.root / project / "groups" / group
        return self.root / project / "latest"

    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def last_good(self, project: str, group: str) -> Path | None:
        """The folder the group pointer names, when it still exists."""
        target = self.pointer(project, group)
        try:
            resolved = target.resolve(strict=True)
        except (FileNotFoundError, RuntimeError):
            return None
        if not resolved.is_dir():
            return None
        info = self.read_info(project, resolved.name)
        return resolved if info is not None and info.get("ExitCode") == 0 else None

    def read_info(self, project: str, build_id: str) -> dict | None:
        try:
            with open(self.ready(project, build_id) / INFO_FILE, "rb") as f:
                return json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged record is never served; the build runs again


def write_json_atomically(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(pending: Path, ready: Path) -> Path | None:
    """Move a finished build folder into place. When an older build with the same id is there
    (a rebuild), swap the two atomically (renameat2 RENAME_EXCHANGE) so readers always see a whole
    build, and return the old folder, now at `pending`, for the caller to remove."""
    ready.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(pending, ready)
        return None
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(pending), _AT_FDCWD, os.fsencode(ready),
                         _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(ready))
        # the file system cannot exchange: move the old one aside, then the new one in
        aside = pending.with_name(pending.name + ".old")
        os.rename(ready, aside)
        os.rename(pending, ready)
        return aside
    return pending


def point(pointer: Path, target: Path) -> None:
    """Make `pointer` a relative symlink to `target` by renaming a new link over it: readers see
    the old or the new pointer, never none."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(os.path.relpath(target, pointer.parent), tmp)
    os.replace(tmp, pointer)
