"""The storage interface every adapter implements; one contract test runs against each."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    name: str

    def create(self, path: Path) -> None:
        """Make a new, empty build folder at `path` (its parent exists)."""

    def clone(self, source: Path, path: Path) -> None:
        """Make `path` a copy of the build folder `source` (copy-on-write where the disk can)."""

    def remove(self, path: Path) -> None:
        """Remove a build folder made by create or clone, whatever it holds."""


def disk_usage(path: Path) -> int:
    """Bytes the folder `path` really occupies: allocated blocks (a sparse file counts what is
    written, not its apparent size), each inode once (hard links), directories included.
    Symlinks are not followed and no file is opened."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for entry in _walk(Path(path)):
        if entry.st_nlink > 1:
            if (entry.st_dev, entry.st_ino) in seen:
                continue
            seen.add((entry.st_dev, entry.st_ino))
        total += entry.st_blocks * 512
    return total


def shared_once_usage(folders: list[Path]) -> list[int]:
    """Bytes each folder occupies on a copy-on-write file system (Btrfs snapshots, reflinks),
    with every data extent charged once, to the first folder (in the order given) that holds it:
    a snapshot is charged only for what it does not share with the folders before it. Extents
    come from the FIEMAP ioctl (the map of a file, not its contents); what FIEMAP cannot place
    (inline data, delayed allocation) is charged where it is found."""
    charged: set[tuple[int, int]] = set()
    sizes = []
    for folder in folders:
        size = 0
        seen_inodes: set[tuple[int, int]] = set()
        for entry in _walk(Path(folder)):
            if (entry.st_dev, entry.st_ino) in seen_inodes:
                continue
            seen_inodes.add((entry.st_dev, entry.st_ino))
            if not stat.S_ISREG(entry.st_mode):
                size += entry.st_blocks * 512
                continue
            size += _unshared_bytes(entry.path, charged, entry.st_blocks * 512)
        sizes.append(size)
    return sizes


@dataclass(frozen=True)
class _Entry:
    path: str
    st_mode: int
    st_dev: int
    st_ino: int
    st_nlink: int
    st_blocks: int


def _walk(root: Path) -> Iterator[_Entry]:
    """Every file and directory below `root` (itself included) by lstat, symlinks not followed."""
    stack = [str(root)]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        yield _Entry(path, st.st_mode, st.st_dev, st.st_ino, st.st_nlink, st.st_blocks)
        if stat.S_ISDIR(st.st_mode):
            try:
                stack.extend(os.path.join(path, name) for name in os.listdir(path))
            except (FileNotFoundError, NotADirectoryError):
                pass


_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # start, length, flags, mapped, count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3
_EXTENTS_PER_CALL = 256
_LAST, _UNKNOWN, _INLINE, _SHARED = 0x1, 0x2, 0x200, 0x2000


def _unshared_bytes(path: str, charged: set[tuple[int, int]], fallback: int) -> int:
    """The bytes of one file's extents not in `charged` (which gains its shared extents)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return fallback
    try:
        return sum(length for physical, length, flags in _extents(fd)
                   if not _charged_before(physical, length, flags, charged))
    except OSError:  # no FIEMAP here: count its blocks
        return fallback
    finally:
        os.close(fd)


def _charged_before(physical: int, length: int, flags: int, charged: set[tuple[int, int]]) -> bool:
    if not flags & _SHARED or flags & (_UNKNOWN | _INLINE):
        return False
    if (physical, length) in charged:
        return True
    charged.add((physical, length))
    return False


def _extents(fd: int) -> Iterator[tuple[int, int, int]]:
    """(physical, length, flags) of every extent of the open file."""
    start = 0
    while True:
        request = bytearray(_FIEMAP_HEADER.size + _EXTENTS_PER_CALL * _FIEMAP_EXTENT.size)
        _FIEMAP_HEADER.pack_into(request, 0, start, (1 << 64) - 1 - start, 0, 0,
                                 _EXTENTS_PER_CALL, 0)
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, request)
        mapped = _FIEMAP_HEADER.unpack_from(request, 0)[3]
        if mapped == 0:
            return
        for i in range(mapped):
            logical, physical, length, _r1, _r2, flags, *_ = _FIEMAP_EXTENT.unpack_from(
                request, _FIEMAP_HEADER.size + i * _FIEMAP_EXTENT.size)
            yield physical, length, flags
            if flags & _LAST:
                return
            start = logical + length
