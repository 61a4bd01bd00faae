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

from .jobs import servable

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

    def make_private(self) -> None:
        """Other users of the host never reach into build_path: what builds leave there is
        hostile (the review found setuid shells in artifacts), and the index holds every
        build's params. The server's group keeps read access (an scp account can be put in it)."""
        mode = self.root.stat().st_mode & 0o7777
        if mode & 0o007:
            os.chmod(self.root, mode & ~0o007)

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
        return resolved if info is not None and servable(info) else None

    def read_info(self, project: str, build_id: str) -> dict | None:
        try:
            with open(self.ready(project, build_id) / INFO_FILE, "rb") as f:
                return json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None  # a damaged record is never served; the build runs again


class BuildPathInUse(Exception):
    """Another mistryd serves this build_path."""


def lock_build_path(layout: Layout) -> int:
    """Take the build_path for this process (an exclusive `flock` held until the descriptor is
    closed, by `Server.stop` or by the process's end, a crash included). A second server on the
    same build_path would remove the first one's pending builds and kill its containers."""
    import fcntl

    state = layout.state_dir()
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BuildPathInUse(f"build_path {layout.root} is in use by another mistryd (pid "
                             f"{holder}); stop it first or give this one another build_path") \
            from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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
