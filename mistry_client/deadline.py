"""A deadline: a point on the monotonic clock (`time.monotonic()`), or None for no limit.

A socket's read timeout restarts with every byte that arrives, so a build that keeps printing
would never run into one: a stream under a deadline is cut at the deadline itself
(`interrupt_at`), and each single request gets at most the time that is left (`cap`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .wire import Response


def after(seconds: float | None) -> float | None:
    """The deadline `seconds` from now (None: none)."""
    return None if seconds is None else time.monotonic() + seconds


def earliest(*deadlines: float | None) -> float | None:
    given = [d for d in deadlines if d is not None]
    return min(given) if given else None


def passed(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def cap(seconds: float, deadline: float | None) -> float:
    """`seconds`, or what is left until the deadline when that is less (never quite zero: a zero
    timeout would make the socket non-blocking)."""
    if deadline is None:
        return seconds
    return max(min(seconds, deadline - time.monotonic()), 0.001)


@contextlib.contextmanager
def interrupt_at(deadline: float | None, response: Response) -> Iterator[None]:
    """While inside, the deadline shuts the response's socket for reading: a read blocked on it
    (or any later one) ends at once, however much the server keeps sending."""
    if deadline is None:
        yield
        return
    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), _shut, (response,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _shut(response: Response) -> None:
    response.shutdown()  # safe from another thread; a closed one is left as it is
