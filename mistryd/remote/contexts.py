"""A remote builder's build contexts: a project's files as the central server has them, one folder
per project and fingerprint under `.mistryd/contexts`.

A builder running several jobs at once takes contexts from several threads: a context is fetched
once however many jobs of it start together (two fetches of one fingerprint used to collide in the
final rename, and the second job waited out its lease before it ran again), and once a newer
context of a project arrived its older ones are removed, except those a running job still builds
from."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from ..queue import JobKey

Fetch = Callable[[str, str, Path], None]  # (project, fingerprint, new folder): fills the folder


class Contexts:
    def __init__(self, root: Path, fetch: Fetch):
        self.root = root
        self._fetch = fetch
        self._lock = threading.Lock()
        self._used: dict[JobKey, Path] = {}  # the context each job holds until release()

    def take(self, key: JobKey, fingerprint: str) -> Path:
        """The folder of the context `fingerprint` of `key`'s project, fetched when this machine
        does not have it; held for `key` until release(key)."""
        context = self.root / key.project / fingerprint
        with self._lock:  # one fetch at a time: they are small, and never collide
            if not context.is_dir():
                self._fetch(key.project, fingerprint, context)
                self._forget_others(context)
            self._used[key] = context
        return context

    def release(self, key: JobKey) -> None:
        with self._lock:
            self._used.pop(key, None)

    def _forget_others(self, keep: Path) -> None:
        held = set(self._used.values())
        for other in keep.parent.iterdir():
            if other != keep and other not in held and not other.name.startswith("."):
                shutil.rmtree(other, ignore_errors=True)
