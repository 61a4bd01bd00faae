"""waitress's I/O loop on epoll, asking a connection what it waits for only when that may have
changed.

waitress's own loop (wasyncore.poll) asks every open connection `readable()` and `writable()` on
every turn, and hands the whole list to select(): with hundreds of log followers and build
waiters open, each cache hit paid for walking all of them, a few times over (hits fell to 0.8x of
what they were without the followers). Here a connection's interest stays registered with epoll,
and is asked again only after an event on it, or after a request thread changed it
(`touch`: MistrydChannel calls it when it wrote or ended a request); every SWEEP seconds all are
asked again (waitress's maintenance closes idle connections from the server's readable()).
The dispatching is waitress's own (wasyncore.readwrite).
"""

from __future__ import annotations

import select
import threading
import time
from collections import deque

from waitress import wasyncore

SWEEP = 1.0  # seconds between asking every connection again


class ChannelLoop:
    """A replacement for the `wasyncore` module as waitress's server uses it (`loop`)."""

    def __init__(self, is_connection):
        self._is_connection = is_connection  # connections are asked when touched; others always
        self._epoll = select.epoll()
        self._flags: dict[int, int] = {}  # fd -> what epoll has for it
        self._touched: deque[int] = deque()  # appended by any thread, emptied by the loop's
        self._lock = threading.Lock()
        self._sweep_at = 0.0
        self._always: list[int] = []  # the listening socket, waitress's trigger

    def touch(self, fd: int | None) -> None:
        """What connection `fd` waits for may have changed (any thread)."""
        if fd is not None:
            self._touched.append(fd)  # atomic: no lock on the request threads' path

    def forget(self, fd: int | None) -> None:
        """Connection `fd` is closing: before its descriptor is closed (any thread)."""
        with self._lock:
            if fd is not None and self._flags.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass  # closed already

    def loop(self, timeout: float = 30.0, use_poll: bool = False, map=None,  # noqa: A002
             count: int | None = None) -> None:
        try:
            while map:
                self._turn(timeout, map)
        finally:
            self._epoll.close()

    def _turn(self, timeout: float, map) -> None:  # noqa: A002 - waitress's name
        now = time.monotonic()
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP
            self._touched.clear()
            with self._lock:
                for fd in [fd for fd in self._flags if fd not in map]:
                    self._forget_locked(fd)
            ask = list(map)
            self._always = [fd for fd in ask if not self._is_connection(map[fd])]
        else:
            touched = set()
            while self._touched:
                touched.add(self._touched.popleft())
            ask = [*self._always, *touched]
        for fd in ask:
            obj = map.get(fd)
            if obj is not None:
                self._register(fd, obj)
        try:
            events = self._epoll.poll(timeout)
        except InterruptedError:
            return
        for fd, flags in events:
            obj = map.get(fd)
            if obj is None:
                continue
            wasyncore.readwrite(obj, flags)  # epoll's flags have poll's values
            self.touch(fd)

    def _register(self, fd: int, obj) -> None:
        flags = 0
        if obj.readable():
            flags |= select.EPOLLIN | select.EPOLLPRI
        if obj.writable() and not obj.accepting:  # a listening socket is never written
            flags |= select.EPOLLOUT
        with self._lock:
            if obj._fileno != fd:  # closed meanwhile by another thread
                return
            had = self._flags.get(fd)
            if flags == (had or 0):
                return
            try:
                if had is None:
                    self._epoll.register(fd, flags)
                elif flags:
                    self._epoll.modify(fd, flags)
                else:
                    self._epoll.unregister(fd)
            except FileExistsError:  # a descriptor number closed and reused unseen
                self._epoll.modify(fd, flags)
            except (FileNotFoundError, OSError):
                self._flags.pop(fd, None)
                return
            if flags:
                self._flags[fd] = flags
            else:
                self._flags.pop(fd, None)

    def _forget_locked(self, fd: int) -> None:
        self._flags.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
