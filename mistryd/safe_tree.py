"""Reading a tree that a build wrote, which is hostile input, from directory descriptors only.

A finished build ran arbitrary code: under its `data/` any name may be a symlink (to `/etc`, to
`/`), a FIFO, a socket, a device, a huge sparse file, or one of millions of files. So nothing here
resolves a path string through the kernel: every component is opened relative to its parent's
descriptor with `O_NOFOLLOW` (a symlink fails instead of being followed), only regular files are
ever opened for reading (checked with `lstat` before the open, opened `O_NONBLOCK` so a FIFO swapped
in cannot block, and checked again with `fstat` on the descriptor), and a walk is bounded in entries
and depth. Messages name paths relative to the tree, never a host path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_LINK_HOPS = 40  # as the kernel's own limit: a link cycle ends as "not found"
CHUNK = 1 << 20


class TreeError(Exception):
    """A tree cannot be read as asked; the message names the path inside the tree."""


class NotFoundInTree(TreeError):
    """No such entry, or it is not what was asked for (a link, a special file)."""


class NotARealDirectory(NotFoundInTree):
    """A component that must be a directory is a symlink, a file or missing."""


class TreeTooLarge(TreeError):
    """More entries or deeper nesting than the walk allows."""


class TreeChanged(TreeError):
    """An entry changed (vanished, changed type or size) while it was being read."""


def open_dir(dir_fd: int, relpath: str) -> int:
    """A descriptor of the directory `relpath` (slash-separated) below `dir_fd`, where every
    component is a real directory; NotARealDirectory otherwise. The caller closes it."""
    fd = os.dup(dir_fd)
    try:
        for name in _components(relpath):
            child = _open_subdir(fd, name, relpath)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_subdir(dir_fd: int, name: str, shown: str) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except (FileNotFoundError, NotADirectoryError):
        raise NotARealDirectory(f"{shown} is not a directory") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotARealDirectory(f"{shown} is a symlink, not a directory") from None
        raise TreeError(f"{shown} cannot be opened ({os.strerror(e.errno or 0)})") from None


def open_regular_at(dir_fd: int, name: str, shown: str | None = None) -> int:
    """A read descriptor of the regular file `name` in `dir_fd`; NotFoundInTree when it is missing,
    a symlink or anything but a regular file (which is then never opened)."""
    shown = shown or name
    try:
        before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundInTree(f"{shown} does not exist") from None
    if not stat.S_ISREG(before.st_mode):
        raise NotFoundInTree(f"{shown} is not a regular file")
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        raise TreeChanged(f"{shown} changed while it was opened") from None
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev,
                                                                          before.st_ino):
        os.close(fd)
        raise TreeChanged(f"{shown} changed while it was opened")
    return fd


def open_file(root_fd: int, relpath: str, follow_inner_links: bool = False) -> int:
    """A read descriptor of the regular file `relpath` below `root_fd`.

    Without `follow_inner_links` every component must be a real directory and the last a regular
    file. With it, symlinks are resolved by hand, one component at a time, and only while they stay
    below `root_fd`: an absolute target or a `..` above the root is NotFoundInTree (as openat2's
    RESOLVE_BENEATH would answer)."""
    if not _components(relpath):
        raise NotFoundInTree("an empty path names no file")
    if not follow_inner_links:
        *dirs, last = _components(relpath)
        parent = open_dir(root_fd, "/".join(dirs))
        try:
            return open_regular_at(parent, last, relpath)
        finally:
            os.close(parent)
    return _resolve_beneath(root_fd, relpath)


def _resolve_beneath(root_fd: int, relpath: str) -> int:
    pending = list(reversed(_components(relpath)))
    chain: list[int] = []  # descriptors of the directories entered below the root
    hops = 0
    try:
        while pending:
            name = pending.pop()
            current = chain[-1] if chain else root_fd
            if name in ("", "."):
                continue
            if name == "..":
                if not chain:
                    raise NotFoundInTree(f"{relpath} leads out of the tree")
                os.close(chain.pop())
                continue
            try:
                st = os.stat(name, dir_fd=current, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                raise NotFoundInTree(f"{relpath} does not exist") from None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                target = os.readlink(name, dir_fd=current)
                if hops > MAX_LINK_HOPS or target.startswith("/"):
                    raise NotFoundInTree(f"{relpath} leads out of the tree")
                pending.extend(reversed(target.split("/")))
            elif not pending:
                return open_regular_at(current, name, relpath)
            else:
                chain.append(_open_subdir(current, name, relpath))
        raise NotFoundInTree(f"{relpath} is not a regular file")
    finally:
        for fd in chain:
            os.close(fd)


def _components(relpath: str) -> list[str]:
    return [p for p in relpath.split("/") if p] if relpath else []


@dataclass(frozen=True)
class Found:
    """One entry of a walk. `dir_fd` (its parent) and `name` are valid until the walk moves on:
    `open_regular_at(found.dir_fd, found.name)` reads a file without resolving any path."""

    path: str
    type: str  # "dir", "file" or "symlink"
    mode: int
    size: int
    mtime: int
    target: str | None
    dir_fd: int
    name: str


def walk(root_fd: int, max_entries: int, max_depth: int) -> Iterator[Found]:
    """Every directory, regular file and symlink below `root_fd` (never followed), in the order of
    their paths as strings. Special files are left out. TreeTooLarge past `max_entries` names or
    `max_depth` levels; no more than `max_entries` names are ever held in memory."""
    levels: list[tuple[int, str, Iterator[tuple[str, bool]]]] = []
    budget = [max_entries]
    try:
        root = os.dup(root_fd)
        levels.append((root, "", iter(_sorted_items(root, "", budget))))
        while levels:
            fd, prefix, items = levels[-1]
            item = next(items, None)
            if item is None:
                os.close(levels.pop()[0])
                continue
            name, is_subtree = item
            path = prefix + name
            if is_subtree:
                if len(levels) >= max_depth:
                    raise TreeTooLarge(f"{path} is nested deeper than {max_depth} levels")
                child = _open_dir_entered(fd, name, path)
                try:
                    items_below = _sorted_items(child, path, budget)
                except BaseException:
                    os.close(child)
                    raise
                levels.append((child, path + "/", iter(items_below)))
                continue
            found = _found(fd, name, path)
            if found is not None:
                yield found
    finally:
        for fd, _, _ in levels:
            os.close(fd)


def _open_dir_entered(dir_fd: int, name: str, path: str) -> int:
    try:
        return _open_subdir(dir_fd, name, path)
    except NotARealDirectory:
        raise TreeChanged(f"{path} changed while the tree was read") from None


def _sorted_items(dir_fd: int, path: str, budget: list[int]) -> list[tuple[str, bool]]:
    """The directory's names, and for each subdirectory a second item for its contents, sorted
    so that a preorder walk comes out in the order of full path strings: `a` < `a-b` < `a/x`
    (the key of a subdirectory's contents is its name plus '/')."""
    items: list[tuple[str, bool]] = []
    try:
        listing = os.scandir(dir_fd)
    except OSError as e:
        raise TreeError(f"{path or '.'} cannot be listed ({os.strerror(e.errno or 0)})") from None
    with listing:
        for entry in listing:
            budget[0] -= 1
            if budget[0] < 0:
                raise TreeTooLarge("the tree has too many entries")
            items.append((entry.name, False))
            if entry.is_dir(follow_symlinks=False):
                items.append((entry.name, True))
    items.sort(key=lambda item: item[0] + "/" if item[1] else item[0])
    return items


def _found(dir_fd: int, name: str, path: str) -> Found | None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise TreeChanged(f"{path} vanished while the tree was read") from None
    size, target = 0, None
    if stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISREG(st.st_mode):
        kind, size = "file", st.st_size
    elif stat.S_ISLNK(st.st_mode):
        kind, target = "symlink", os.readlink(name, dir_fd=dir_fd)
    else:
        return None  # devices, FIFOs, sockets: never listed, never opened
    return Found(path=path, type=kind, mode=stat.S_IMODE(st.st_mode), size=size,
                 mtime=int(st.st_mtime), target=target, dir_fd=dir_fd, name=name)


def digests_of(fd: int, expected_size: int, shown: str) -> tuple[str, str]:
    """The sha256 and BLAKE3 of exactly `expected_size` bytes read from `fd`; TreeChanged when
    the file ends sooner."""
    from blake3 import blake3

    sha256, fast = hashlib.sha256(), blake3()
    for chunk in read_exactly(fd, expected_size, shown):
        sha256.update(chunk)
        fast.update(chunk)
    return sha256.hexdigest(), fast.hexdigest()


def read_exactly(fd: int, size: int, shown: str) -> Iterator[bytes]:
    """`size` bytes from `fd` in chunks; TreeChanged when the file ends sooner (it shrank)."""
    left = size
    while left > 0:
        chunk = os.read(fd, min(CHUNK, left))
        if not chunk:
            raise TreeChanged(f"{shown} shrank while it was read")
        left -= len(chunk)
        yield chunk


class FileOpener:
    """Opens many files of one tree in path order, keeping the descriptors of the current
    directory chain so that a file next to the previous one costs one `openat`, not one per
    component. Never follows a symlink."""

    def __init__(self, root_fd: int):
        self._root_fd = root_fd
        self._chain: list[tuple[str, int]] = []  # (component, fd) from the root down

    def open(self, relpath: str) -> int:
        if not _components(relpath):
            raise NotFoundInTree("an empty path names no file")
        *dirs, last = _components(relpath)
        keep = 0
        while keep < min(len(dirs), len(self._chain)) and self._chain[keep][0] == dirs[keep]:
            keep += 1
        while len(self._chain) > keep:
            os.close(self._chain.pop()[1])
        for name in dirs[keep:]:
            parent = self._chain[-1][1] if self._chain else self._root_fd
            self._chain.append((name, _open_subdir(parent, name, relpath)))
        parent = self._chain[-1][1] if self._chain else self._root_fd
        return open_regular_at(parent, last, relpath)

    def close(self) -> None:
        while self._chain:
            os.close(self._chain.pop()[1])

    def __enter__(self) -> FileOpener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
