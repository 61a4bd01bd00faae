"""The answers to cache hits, kept in memory: the hot path of the whole server.

A hit is answered with the bytes of its JSON, built once per finished build. Each use checks the
build's build_info.json with one `stat` (inode, size, mtime), so a rebuild (a new folder swapped
in), a removal by garbage collection or a change by another process is seen at once; nothing has
to tell this cache anything.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .jobs import BuildInfo
from .layout import INFO_FILE, LOG_FILE, Layout

MAX_BYTES = 64 << 20  # answers kept at most, least recently used dropped first


@dataclass(frozen=True)
class Hit:
    info: BuildInfo  # Cached=True, Coalesced=False
    body: bytes  # the wire form, with the whole log, as upstream answers
    signature: tuple[int, int, int]


def wire_form(layout: Layout, info: BuildInfo) -> dict:
    """A BuildInfo as the API answers it: with the whole log, as upstream does."""
    body = info.to_json()
    try:
        body["ContainerStdouterr"] = (layout.ready(info.Project, info.ID) / LOG_FILE) \
            .read_text(errors="replace")
    except FileNotFoundError:
        pass
    return body


class HitCache:
    def __init__(self, layout: Layout, max_bytes: int = MAX_BYTES):
        self.layout = layout
        self._root = str(layout.root)
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], Hit] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, project: str, build_id: str) -> Hit | None:
        """The answer for a finished successful build, or None (not built, failed, removed)."""
        try:  # a string join: this runs on every cache hit
            st = os.stat(os.path.join(self._root, project, "ready", build_id, INFO_FILE))
        except (FileNotFoundError, NotADirectoryError):
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        key = (project, build_id)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit.signature == signature:
                self._entries.move_to_end(key)
                return hit
        hit = self._load(project, build_id, signature)
        if hit is not None:
            self._keep(key, hit)
        return hit

    def _load(self, project: str, build_id: str, signature: tuple[int, int, int]) -> Hit | None:
        raw = self.layout.read_info(project, build_id)
        if raw is None or raw.get("ExitCode") != 0:
            return None  # failed builds are never served
        info = BuildInfo.from_json(raw)
        info.Cached, info.Coalesced = True, False
        return Hit(info, json.dumps(wire_form(self.layout, info)).encode(), signature)

    def _keep(self, key: tuple[str, str], hit: Hit) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            if len(hit.body) > self.max_bytes:
                return
            self._entries[key] = hit
            self._bytes += len(hit.body)
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= len(dropped.body)
