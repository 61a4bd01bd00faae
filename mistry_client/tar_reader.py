"""Reading mistryd's artifact tar as it arrives: headers (ustar, with PAX records for long names and
large sizes), and file bodies handed out in the pieces they came in, never held whole.

Only what mistryd writes is accepted: files, directories and symlinks. A header whose checksum is
wrong is a corrupt stream (TransferError); a stream that ends before its end blocks is a cut one
(StreamCut, which the caller resumes)."""

from __future__ import annotations

import struct
from collections import namedtuple
from collections.abc import Iterable, Iterator

from .errors import TransferError

BLOCK = 512
_ZEROS = bytes(BLOCK)
_TYPES = {b"0": "file", b"\0": "file", b"5": "dir", b"2": "symlink"}
# name, mode, uid, gid, size, mtime, checksum, type, link name, magic, version, user, group,
# devmajor, devminor, prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")


class StreamCut(Exception):
    """The stream ended before the tar did: a dropped connection."""


Member = namedtuple("Member", "path type size target")  # type: "file", "dir" or "symlink"


class TarReader:
    """Pieces of the stream are handed out as memoryviews of the chunks they arrived in (no
    copy); a header that straddles two chunks is joined. A chunk's memory may be used again for
    the next one (Response.reused_pieces)."""

    def __init__(self, chunks: Iterator[bytes | memoryview]):
        self._chunks = chunks
        self._chunk: bytes | memoryview = b""
        self._pos = 0

    def next_member(self) -> Member | None:
        """The next member's header; None at the end of the tar."""
        pax: dict[str, str] | None = None
        while True:
            header = self._block()
            if header == _ZEROS:
                return None
            (name, _, _, _, size_field, _, sum_field, flag, link, magic, _, _, _, _, _,
             prefix) = _HEADER.unpack(header)
            _check_sum(header, sum_field)
            size = _number(size_field)
            if flag == b"x":  # PAX records for the header that follows
                pax = pax or {}
                pax.update(_pax_records(bytes(self.read(_padded(size)))[:size]))
                continue
            kind = _TYPES.get(flag)
            if kind is None:
                raise TransferError(f"the artifact stream has a member of type {flag!r}, which "
                                    "mistryd never sends; the target was left untouched")
            path = _text(name)
            if magic[:5] == b"ustar" and prefix[0]:
                path = f"{_text(prefix)}/{path}"
            target = _text(link)
            if pax:
                path = pax.get("path", path)
                size = int(pax.get("size", size))
                target = pax.get("linkpath", target)
            if kind == "dir":
                path = path.rstrip("/")
            return Member(path, kind, size if kind == "file" else 0, target)

    def _block(self) -> bytes:
        """The next header block, as bytes."""
        pos, chunk = self._pos, self._chunk
        if len(chunk) - pos >= BLOCK:
            self._pos = pos + BLOCK
            return bytes(chunk[pos:pos + BLOCK])
        return bytes(self.read(BLOCK))

    def body(self, size: int) -> Iterable[memoryview]:
        """The member's `size` bytes in pieces as they arrive, then past its padding. A piece
        may share its memory with the next chunk read (Response.reused_pieces): use each
        before asking for the next."""
        pos, chunk = self._pos, self._chunk
        padded = _padded(size)
        if len(chunk) - pos >= padded:  # the common case: the whole body is in this chunk
            self._pos = pos + padded
            return (memoryview(chunk)[pos:pos + size],)
        return self._body(size)

    def _body(self, size: int) -> Iterator[memoryview]:
        yield from self._pieces_of(size)
        if size % BLOCK:
            self.read(BLOCK - size % BLOCK)

    def _pieces_of(self, size: int) -> Iterator[memoryview]:
        left = size
        while left:
            piece = self.read_some(left)
            left -= len(piece)
            yield piece

    def read(self, n: int) -> memoryview:
        """Exactly n bytes."""
        piece = self.read_some(n)
        if len(piece) == n:
            return piece
        joined = bytearray(piece)
        while len(joined) < n:
            joined += self.read_some(n - len(joined))
        return memoryview(joined)

    def read_some(self, n: int) -> memoryview:
        """1 to n bytes: what is left of the current chunk, or of the next one."""
        if self._pos == len(self._chunk):
            self._chunk = next(self._chunks, b"")
            self._pos = 0
            if not self._chunk:
                raise StreamCut("the artifact stream ended before the tar did")
        piece = memoryview(self._chunk)[self._pos:self._pos + n]
        self._pos += len(piece)
        return piece


def _check_sum(header: bytes, field: bytes) -> None:
    try:
        stored = int(field.rstrip(b"\0 ") or b"-1", 8)
    except ValueError:
        stored = -1
    # the sum of the header's bytes with the checksum field counted as eight spaces
    if stored != sum(header) - sum(field) + 256:
        raise TransferError("the artifact stream is corrupt (a tar header's checksum is wrong); "
                            "the target was left untouched")


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, as GNU tar writes large numbers
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        raise TransferError("the artifact stream is corrupt (a tar header has a bad number); the "
                            "target was left untouched") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _pax_records(data: bytes) -> Iterator[tuple[str, str]]:
    """`<length> <key>=<value>\\n` records."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TransferError("the artifact stream is corrupt (a bad PAX record); the target "
                                "was left untouched") from None
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        yield key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
        pos += length
