"""What a target already holds of a manifest, so that a re-fetch moves only what changed.

A file in the target is taken as equal to the manifest's when it is a regular file (reached through
real directories only) with the manifest's size and mode and the manifest's sha256. Reading every
file to hash it would cost as much as a large part of the download, so after each fetch the client
records, per file it placed, the sha256 together with the file's inode, size, mtime and ctime
(nanoseconds) in a small state file under ~/.cache/mistry (XDG_CACHE_HOME), keyed by the target's
real path. A file whose inode, size, mtime and ctime are all still as recorded has not been written
to, renamed over or chmod-ed since (ctime cannot be set back from user space), so its recorded
sha256 stands. Any other file of the right size is hashed. The state file is a cache: when it is
missing, unreadable or stale, files are hashed, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

STATE_VERSION = 1
HASH_CHUNK = 1 << 20


def state_file(target: Path) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha256(os.fsencode(os.path.realpath(target))).hexdigest()[:32]
    return Path(cache) / "mistry" / "targets" / f"{key}.json"


def _load(target: Path) -> dict[str, list]:
    try:
        with open(state_file(target), "rb") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    ok = isinstance(state, dict) and state.get("v") == STATE_VERSION \
        and state.get("target") == os.path.realpath(target) and isinstance(state.get("files"), dict)
    return state["files"] if ok else {}


def signature(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def already_there(target: Path, entries: list[dict], mode_mask: int) -> tuple[set[int], bool]:
    """Indexes of the manifest entries the target holds as they are: files (see above), symlinks
    with the same target, real directories with the same mode; and whether the state file already
    vouched for every file found (else it is worth writing again)."""
    if not target.is_dir() or _empty(target):
        return set(), False  # nothing there (the usual first fetch)
    recorded = _load(target)
    checks = _Checks(recorded)
    root = os.fspath(target)
    not_real_dirs: set[str] = set()  # dirs the target lacks: nothing beneath them counts
    there: set[int] = set()
    for i, entry in enumerate(entries):
        path = entry["path"]
        parent = path.rpartition("/")[0]
        if parent and _beneath(parent, not_real_dirs):
            if entry["type"] == "dir":
                not_real_dirs.add(path)
            continue
        try:
            st = os.lstat(f"{root}/{path}")
        except OSError:
            st = None
        kind = entry["type"]
        if kind == "dir":
            if st is None or not stat.S_ISDIR(st.st_mode):
                not_real_dirs.add(path)
            elif stat.S_IMODE(st.st_mode) == entry.get("mode", 0o755) & mode_mask:
                there.add(i)
        elif st is None:
            continue
        elif kind == "symlink":
            if stat.S_ISLNK(st.st_mode) and os.readlink(f"{root}/{path}") == entry["target"]:
                there.add(i)
        elif checks.same_file(f"{root}/{path}", st, entry, mode_mask, path):
            there.add(i)
    return there, not checks.hashed


def _empty(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def _beneath(parent: str, dirs: set[str]) -> bool:
    while parent:
        if parent in dirs:
            return True
        parent = parent.rpartition("/")[0]
    return False


class _Checks:
    def __init__(self, recorded: dict[str, list]):
        self.recorded = recorded
        self.hashed = False  # some file had to be read

    def same_file(self, path: str, st: os.stat_result, entry: dict, mode_mask: int,
                  rel: str) -> bool:
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"] \
                or stat.S_IMODE(st.st_mode) != entry.get("mode", 0o644) & mode_mask:
            return False
        if self.recorded.get(rel) == [entry["sha256"], *signature(st)]:
            return True
        self.hashed = True
        return _sha256_of(path) == entry["sha256"]


def _sha256_of(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def record(target: Path, files: Iterable[dict], written: dict[str, list[int]],
           moved: set[str]) -> None:
    """Remember the sha256 and signature of the manifest's files as they now are in the target.
    `written`: the signatures of the files just placed, taken in the staging folder; `moved`:
    the paths renamed into the target (a rename changes the ctime of what it moves, not of what
    lies beneath it), which are looked at again. Best effort: a cache that cannot be written
    only makes the next re-fetch hash."""
    root = os.fspath(target)
    seen: dict[str, list] = {}
    for entry in files:
        path = entry["path"]
        known = None if path in moved else written.get(path)
        if known is not None:
            seen[path] = [entry["sha256"], *known]
            continue
        try:
            st = os.lstat(f"{root}/{path}")
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            seen[path] = [entry["sha256"], *signature(st)]
    path = state_file(target)
    body = {"v": STATE_VERSION, "target": os.path.realpath(target), "files": seen}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(path.parent / f".state-{os.getpid()}-{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:  # dumps: json.dump would use the slow pure-Python encoder
                f.write(json.dumps(body, separators=(",", ":")).encode())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
