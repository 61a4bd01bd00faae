"""Project discovery and the content fingerprint that goes into every job key.

The fingerprint is a sha256 over the sorted relative paths of the project folder with, for each
entry, its kind, executable bit and content hash (a symlink: its target). It ignores mtimes, owners
and permissions other than the executable bit, so a fresh checkout hits the cache. It is memoized:
a request re-stats the files (cheap: no reads) and re-hashes only files whose stat changed, so a
cache hit costs the same for a 1 MB and a 500 MB project. The memo is one per process, so the
check right before an image build (`folder_fingerprint`) costs the same stats again, no reads.
`known_fingerprint` is the fingerprint only when it costs no more than that for a small project:
no read, at most QUICK_ENTRIES stats (the I/O thread asks it before answering a hit itself).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import UnknownProject
from .names import name_problem

CHUNK = 1 << 20
QUICK_ENTRIES = 256  # entries known_fingerprint stats at most


@dataclass(frozen=True)
class _Seen:
    signature: tuple  # _signature(stat) when hashed
    digest: str


class _FileHashes:
    """The content hash of each file seen, keyed by its path and valid while its stat is the same
    (a path with the same stat signature holds the same bytes)."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def digest(self, path: str, st: os.stat_result) -> str:
        known = self.known(path, st)
        if known is not None:
            return known
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        with self._lock:
            self._seen[path] = _Seen(_signature(st), digest)
        return digest

    def known(self, path: str, st: os.stat_result) -> str | None:
        """The digest when the file has not changed since it was hashed; None otherwise."""
        seen = self._seen.get(path)
        return seen.digest if seen is not None and seen.signature == _signature(st) else None


def _signature(st: os.stat_result) -> tuple:
    """What changes when a file's bytes may have: any change means hashing it again."""
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)


_FILE_HASHES = _FileHashes()


Entry = tuple[str, str, str]  # (relative path, kind: dir, file-, filex or link, hash or target)


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """The fingerprint of a project folder as it is now; OSError when it cannot be read."""
    return entries_fingerprint(folder_entries(folder))


def known_fingerprint(folder: str | os.PathLike) -> str | None:
    """The fingerprint of a project folder when it is known without reading a file and from at
    most QUICK_ENTRIES entries; None otherwise (OSError when the folder cannot be read)."""
    try:
        return entries_fingerprint(_walk(os.fspath(folder), quick=True))
    except _NotQuick:
        return None


def folder_entries(folder: str | os.PathLike) -> list[Entry]:
    """The per-file fingerprint of a project folder, sorted by path: what `folder_fingerprint`
    hashes, kept with each build so that a miss can be explained file by file (explain.py)."""
    return _walk(os.fspath(folder))


def entries_fingerprint(entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for rel, kind, detail in entries:
        h.update(f"{len(rel)}:{rel}\0{kind}\0{detail}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class _NotQuick(Exception):
    """_walk(quick=True) would read a file or stat more than QUICK_ENTRIES entries."""


def _walk(root: str, quick: bool = False) -> list[Entry]:
    entries: list[Entry] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if quick and len(entries) >= QUICK_ENTRIES:
                    raise _NotQuick
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    entries.append((rel, "link", os.readlink(entry.path)))
                elif stat.S_ISDIR(st.st_mode):
                    entries.append((rel, "dir", ""))
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    exe = "x" if st.st_mode & 0o111 else "-"
                    digest = (_FILE_HASHES.known(entry.path, st) if quick
                              else _FILE_HASHES.digest(entry.path, st))
                    if digest is None:
                        raise _NotQuick
                    entries.append((rel, "file" + exe, digest))
    entries.sort()
    return entries


class Projects:
    def __init__(self, projects_path: Path):
        self.root = Path(projects_path)
        self._root = str(self.root)  # plain strings on the hot path: pathlib joins cost more

    def path(self, name: str) -> Path:
        """The project's folder; UnknownProject when there is no such project."""
        return Path(self._folder(name))

    def _folder(self, name: str) -> str:
        if name_problem(name):
            raise UnknownProject(name)
        folder = os.path.join(self._root, name)
        if not os.path.isfile(os.path.join(folder, "Dockerfile")):
            raise UnknownProject(name)
        return folder

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if not name_problem(p.name) and (p / "Dockerfile").is_file()
        )

    def fingerprint(self, name: str) -> str:
        return folder_fingerprint(self._folder(name))
