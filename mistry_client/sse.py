"""A Server-Sent Events reader over a streamed response's pieces."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Iterator

Event = namedtuple("Event", "data event id", defaults=("message", None))


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    buf = b""
    for chunk in chunks:
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for line in complete:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


def events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """Parse an SSE byte stream into events (comments and `retry:` are skipped)."""
    data: list[str] = []
    event, event_id = "message", None
    for line in _lines(chunks):
        if not line:
            if data or event != "message":
                yield Event("\n".join(data), event, event_id)
            data, event, event_id = [], "message", None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
