"""A daemon thread that does one thing every so many seconds until stopped (the coordinator's
look, the batch driver, a builder's announcement)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("mistryd")


class Every:
    def __init__(self, seconds: float, action: Callable[[], None], name: str,
                 failure: str = "mistryd: a periodic task failed"):
        self.seconds = seconds
        self._action = action
        self._failure = failure  # logged with the traceback when `action` raises
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._action()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception(self._failure)
            self._stop.wait(self.seconds)
