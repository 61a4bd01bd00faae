"""Reading mistryd's artifact tar as it arrives: headers (ustar, with PAX records for long names and
large sizes), and file bodies handed out in the pieces they came in, never held whole.

Only what mistryd writes is accepted: files, directories and symlinks. A header whose checksum is
wrong is a corrupt stream (TransferError); a stream that ends before its end blocks is a cut one
(StreamCut, which the caller resumes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import TransferError

BLOCK = 512
_TYPES = {b"0": "file", b"\0": "file", b"5": "dir", b"2": "symlink"}


class StreamCut(Exception):
    """The stream ended before the tar did: a dropped connection."""


@dataclass
class Member:
    path: str
    type: str  # "file", "dir" or "symlink"
    size: int
    target: str


class TarReader:
    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._chunk = memoryview(b"")
        self._pos = 0

    def next_member(self) -> Member | None:
        """The next member's header; None at the end of the tar."""
        pax: dict[str, str] = {}
        while True:
            header = bytes(self.read(BLOCK))
            if header == bytes(BLOCK):
                return None
            _check_sum(header)
            flag = header[156:157]
            size = _number(header[124:136])
            if flag == b"x":  # PAX records for the header that follows
                pax.update(_pax_records(bytes(self.read(_padded(size)))[:size]))
                continue
            kind = _TYPES.get(flag)
            if kind is None:
                raise TransferError(f"the artifact stream has a member of type {flag!r}, which "
                                    "mistryd never sends; the target was left untouched")
            name = _text(header[0:100])
            if header[257:262] == b"ustar" and header[345] != 0:
                name = f"{_text(header[345:500])}/{name}"
            path = pax.get("path", name)
            if kind == "dir":
                path = path.rstrip("/")
            size = int(pax.get("size", size))
            return Member(path, kind, size if kind == "file" else 0,
                          pax.get("linkpath", _text(header[157:257])))

    def body(self, size: int) -> Iterator[memoryview]:
        """The member's `size` bytes, in pieces, then past its padding."""
        left = size
        while left:
            piece = self.read_some(left)
            left -= len(piece)
            yield piece
        if size % BLOCK:
            self.read(BLOCK - size % BLOCK)

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
            self._chunk = memoryview(next(self._chunks, b""))
            self._pos = 0
            if not self._chunk:
                raise StreamCut("the artifact stream ended before the tar did")
        piece = self._chunk[self._pos:self._pos + n]
        self._pos += len(piece)
        return piece


def _check_sum(header: bytes) -> None:
    try:
        stored = int(header[148:156].rstrip(b"\0 ") or b"-1", 8)
    except ValueError:
        stored = -1
    if stored != sum(header[:148]) + 256 + sum(header[156:]):
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
