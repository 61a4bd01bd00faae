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

from .jobs import BuildInfo, servable
from .layout import INFO_FILE, LOG_FILE, Layout

MAX_BYTES = 64 << 20  # answers kept at most, least recently used dropped first


@dataclass(frozen=True)
class Hit:
    info: BuildInfo  # Cached=True, Coalesced=False
    body: bytes  # the wire form, with the whole log, as upstream answers
    signature: tuple[int, int, int]


# An answer carries at most this much of the log (its end, where the errors are); the whole log
# is at /job/<project>/<id>/out.log. Without a cap every hit of a build with a 100 MB log read and
# sent 100 MB, and eight at once took 1.7 GB of memory.
MAX_LOG_IN_ANSWER = 1 << 20


def wire_form(layout: Layout, info: BuildInfo) -> dict:
    """A BuildInfo as the API answers it: with the log, as upstream does (its last
    MAX_LOG_IN_ANSWER bytes when it is longer, after a line that says so)."""
    body = info.to_json()
    try:
        body["ContainerStdouterr"] = log_tail(layout.ready(info.Project, info.ID) / LOG_FILE,
                                              f"/job/{info.Project}/{info.ID}/out.log")
    except (FileNotFoundError, NotADirectoryError):
        pass
    return body


def log_tail(path: os.PathLike, whole_url: str, limit: int = MAX_LOG_IN_ANSWER) -> str:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= limit:
            return f.read().decode("utf-8", "replace")
        f.seek(size - limit)
        tail = f.read(limit)
    tail = tail[tail.find(b"\n") + 1:] or tail  # from the first whole line
    note = (f"[mistryd: the log has {size} bytes; this answer holds its last {len(tail)}; "
            f"the whole log: {whole_url}]\n")
    return note + tail.decode("utf-8", "replace")


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
        signature, hit = self._kept(project, build_id)
        if hit is not None or signature is None:
            return hit
        hit = self._load(project, build_id, signature)
        if hit is not None:
            self._keep((project, build_id), hit)
        return hit

    def kept(self, project: str, build_id: str) -> Hit | None:
        """The answer when it is in memory and still true (one `stat`, no read); None otherwise."""
        return self._kept(project, build_id)[1]

    def _kept(self, project: str, build_id: str) -> tuple[tuple[int, int, int] | None, Hit | None]:
        """(the build's signature now or None when it is not ready, the answer kept for it)."""
        try:  # a string join: this runs on every cache hit
            st = os.stat(os.path.join(self._root, project, "ready", build_id, INFO_FILE))
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        key = (project, build_id)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit.signature == signature:
                self._entries.move_to_end(key)
                return signature, hit
        return signature, None

    def _load(self, project: str, build_id: str, signature: tuple[int, int, int]) -> Hit | None:
        raw = self.layout.read_info(project, build_id)
        if raw is None or not servable(raw):
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
