"""Reserving a large file's blocks before its bytes arrive: the file system then allocates the
whole file at once instead of a few pages at a time under every write (a cached build's 200 MiB
artifact into ext4, the whole `mistry build`: 186 -> 167 ms; docs/performance.md, "Session 14").

Plain fallocate(2) through ctypes, not os.posix_fallocate: on a file system without fallocate
(NFSv3, some FUSE mounts) glibc's posix_fallocate falls back to reading and writing a byte in every
4 KiB block, seconds over a network, where fallocate(2) just says no and the bytes are written as
they come. ctypes costs about 3 ms to import, so only files of FROM bytes or more ask (the saving
is about 0.1 ms per MiB)."""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FROM = 32 << 20
KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE: blocks reserved, the size still grows with what is written

_fallocate: Any = None  # libc's fallocate once looked up; False where there is none


def reserve(fd: int, offset: int, length: int) -> None:
    """Asks the file system for `length` bytes of `fd` from `offset`, leaving its size as it is.
    A full disk is an OSError (ENOSPC) now rather than after the bytes came; a file system or a
    Python that cannot reserve changes nothing."""
    if length <= 0:
        return
    function = _libc_fallocate()
    if function and function(fd, KEEP_SIZE, offset, length) != 0:
        import ctypes

        error = ctypes.get_errno()
        if error in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(error, os.strerror(error))


def _libc_fallocate():
    global _fallocate
    if _fallocate is None:
        try:
            import ctypes

            function = ctypes.CDLL(None, use_errno=True).fallocate
            function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            function.restype = ctypes.c_int
            _fallocate = function
        except (ImportError, OSError, AttributeError):
            _fallocate = False
    return _fallocate
