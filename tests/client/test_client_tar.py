"""The tar headers mistryd writes by hand and the client's streaming reader: both agree with
Python's tarfile, for plain ustar names, long and non-ASCII names (PAX), links and directories."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mistry_client.errors import TransferError
from mistry_client.tar_reader import StreamCut, TarReader, _check_sum
from mistryd.web.artifacts import BLOCK, _tar_header

LONG = "a-folder-with-a-long-name/" * 5 + "file.txt"  # 138 bytes: ustar's prefix holds it
LONGER = "x" * 120 + "/" + "y" * 120  # no split fits: PAX
ENTRIES = [
    {"path": "dir", "type": "dir", "mode": 0o755, "mtime": 1700000000},
    {"path": "dir/file.txt", "type": "file", "mode": 0o640, "mtime": 1700000001, "size": 5},
    {"path": "empty", "type": "file", "mode": 0o644, "mtime": 0, "size": 0},
    {"path": "link", "type": "symlink", "mode": 0o777, "mtime": 1, "target": "../x/y"},
    {"path": LONG, "type": "file", "mode": 0o600, "mtime": 2, "size": 3},
    {"path": LONGER, "type": "file", "mode": 0o600, "mtime": 3, "size": 1},
    {"path": "caf\u00e9.txt", "type": "file", "mode": 0o644, "mtime": 4, "size": 2},
    {"path": "spans-chunks.bin", "type": "file", "mode": 0o644, "mtime": 5, "size": 3000},
]


def _content(entry: dict) -> bytes:
    """A file's bytes, different in every file (a piece read into memory used again later
    would show)."""
    size = entry.get("size", 0)
    return bytes((i * 7 + len(entry["path"])) % 251 for i in range(size))


def _server_tar() -> bytes:
    out = bytearray()
    for entry in ENTRIES:
        size = entry.get("size", 0)
        out += _tar_header(entry, size) + _content(entry)
        out += bytes(-size % BLOCK)
    return bytes(out + bytes(2 * BLOCK))


def test_headers_written_by_hand_read_back_with_tarfile():
    with tarfile.open(fileobj=io.BytesIO(_server_tar())) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [e["path"] for e in ENTRIES]
        for m, e in zip(members, ENTRIES, strict=True):
            assert (m.mode, m.mtime, m.size) == (e["mode"], e["mtime"], e.get("size", 0))
            assert m.type == {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE,
                              "symlink": tarfile.SYMTYPE}[e["type"]]
        assert members[3].linkname == "../x/y"
        assert tar.extractfile("dir/file.txt").read() == _content(ENTRIES[1])


def _one_buffer(data: bytes, chunk: int):
    """The chunks as the client reads them (Response.reused_pieces): each into the same memory,
    overwriting the one before."""
    buffer = memoryview(bytearray(chunk))
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        buffer[:len(piece)] = piece
        yield buffer[:len(piece)]


def _read_all(data: bytes, chunk: int) -> list[tuple[str, str, bytes, str]]:
    reader = TarReader(_one_buffer(data, chunk))
    found = []
    while (m := reader.next_member()) is not None:
        found.append((m.path, m.type, b"".join(bytes(p) for p in reader.body(m.size)), m.target))
    return found


@pytest.mark.parametrize("chunk", [1, 7, 512, 1 << 20])
def test_the_reader_reads_our_tar_and_tarfiles_pax_tar_in_any_chunking(chunk):
    expected = [(e["path"], e["type"], _content(e), e.get("target", ""))
                for e in ENTRIES]
    assert _read_all(_server_tar(), chunk) == expected

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, kind, body, target in expected:
            info = tarfile.TarInfo(path)
            info.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE,
                         "symlink": tarfile.SYMTYPE}[kind]
            info.size, info.linkname = len(body), target
            tar.addfile(info, io.BytesIO(body) if body else None)
    assert _read_all(buf.getvalue(), chunk) == expected


def test_a_corrupt_header_or_a_cut_stream_is_told_apart():
    data = bytearray(_server_tar())
    data[BLOCK + 10] ^= 1  # a byte of the second header (a name: it still parses)
    with pytest.raises(TransferError, match="checksum"):
        _read_all(bytes(data), 4096)
    with pytest.raises(StreamCut):
        _read_all(_server_tar()[:BLOCK + 100], 4096)


@given(st.binary(min_size=BLOCK, max_size=BLOCK), st.integers(-70000, 70000))
def test_the_header_checksum_is_the_byte_sum_with_its_field_as_spaces(header, off):
    """Every true checksum passes, and nothing else does."""
    true_sum = sum(header[:148]) + 256 + sum(header[156:])
    if off == 0 or true_sum + off < 0:
        off = 1

    def checked(value: int) -> None:
        field = b"%06o\0 " % value
        _check_sum(header[:148] + field + header[156:], field)

    checked(true_sum)
    with pytest.raises(TransferError, match="checksum"):
        checked(true_sum + off)
