"""Who may remove a finished build while someone reads it: nobody.

A reader of a build folder (an artifact download, a `.tar`, a manifest walk) holds a shared
`flock` on the folder's directory descriptor for as long as it reads; garbage collection evicts a
folder only while it holds the exclusive lock, taken without waiting (a build being read is left
for the next pass). `flock` works across processes, so `mistryd gc` beside a running server obeys
the same rule.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def reading(folder: Path | str) -> Iterator[int]:
    """Hold a build folder for reading; yields its directory descriptor (a base for `openat`).
    FileNotFoundError when the folder is gone (or was moved away while we waited for the lock);
    NotADirectoryError / OSError(ELOOP) when it is not a real directory."""
    fd = os.open(folder, _DIR_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # GC may have moved the folder to its trash between our open and our lock
        try:
            still_there = os.stat(folder, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            still_there = False
        if not still_there:
            raise FileNotFoundError(2, "the build was removed", str(folder))
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def evicting(folder: Path | str) -> Iterator[bool]:
    """Try to take a build folder for removal: yields True while nobody reads it (or it does not
    exist), False when a reader holds it. Keep the block open until the folder is moved away."""
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
