"""Done: a threading.Event that others can listen to.

A request thread that waits for one of several things (a build's end, or its client hanging up)
cannot wait on two Events at once; polling them costs a wake-up a second per waiter, and hundreds
of waiters taking the interpreter lock that often slow every cache hit of their process. So the
waiter waits on one Event of its own, and each thing it waits for sets that one (`listen`)."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Done(threading.Event):
    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()

    def set(self) -> None:
        with self._listeners_lock:
            super().set()
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()

    def listen(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` (at once if set already, else once when set, on the setting thread:
        it must be quick). Returns the function that stops listening."""
        with self._listeners_lock:
            if not self.is_set():
                self._listeners.append(listener)
                return lambda: self._forget(listener)
        listener()
        return lambda: None

    def _forget(self, listener: Callable[[], None]) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)
