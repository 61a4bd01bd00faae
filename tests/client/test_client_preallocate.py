"""preallocate.reserve: a large file's blocks asked for before its bytes arrive, on a real file
system; a full disk says so at once; a file system that cannot reserve changes nothing."""

from __future__ import annotations

import ctypes
import errno
import os

import pytest
from support import small_tmpfs

from mistry_client import preallocate

MIB = 1 << 20


def test_blocks_are_reserved_and_the_size_stays(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"head")
        preallocate.reserve(fd, 4, 8 * MIB)
        st = os.fstat(fd)
        assert st.st_size == 4  # what is written, not what is reserved
        assert st.st_blocks * 512 >= 8 * MIB
        os.pwrite(fd, b"x" * MIB, 4)
        assert os.fstat(fd).st_size == 4 + MIB
    finally:
        os.close(fd)


def test_a_disk_too_small_says_so_at_once(tmp_path):
    with small_tmpfs(tmp_path / "tiny", "4m") as disk:
        fd = os.open(disk / "f", os.O_RDWR | os.O_CREAT)
        try:
            with pytest.raises(OSError) as raised:
                preallocate.reserve(fd, 0, 64 * MIB)
            assert raised.value.errno == errno.ENOSPC
            assert os.fstat(fd).st_size == 0
        finally:
            os.close(fd)


def _fallocate_fails_with(monkeypatch, error: int) -> list:
    """Fault injection: libc's fallocate answers -1 with `error`; the calls are recorded."""
    calls = []

    def fallocate(fd, mode, offset, length):
        calls.append((mode, offset, length))
        ctypes.set_errno(error)
        return -1

    monkeypatch.setattr(preallocate, "_fallocate", fallocate)
    return calls


@pytest.mark.parametrize("error", [errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL])
def test_a_file_system_that_cannot_reserve_changes_nothing(tmp_path, monkeypatch, error):
    calls = _fallocate_fails_with(monkeypatch, error)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        preallocate.reserve(fd, 0, 64 * MIB)
        assert calls == [(preallocate.KEEP_SIZE, 0, 64 * MIB)]
        assert os.fstat(fd).st_blocks == 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_an_error(tmp_path, monkeypatch, error):
    _fallocate_fails_with(monkeypatch, error)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError) as raised:
            preallocate.reserve(fd, 0, 64 * MIB)
        assert raised.value.errno == error
    finally:
        os.close(fd)


def test_a_python_without_ctypes_reserves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(preallocate, "_fallocate", None)
    monkeypatch.setitem(__import__("sys").modules, "ctypes", None)  # import ctypes -> ImportError
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        preallocate.reserve(fd, 0, 64 * MIB)
        assert os.fstat(fd).st_blocks == 0
        assert preallocate._fallocate is False
    finally:
        os.close(fd)
