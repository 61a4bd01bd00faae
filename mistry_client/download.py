"""Downloading artifact files into a staging folder over HTTP, each checked as it is written: a
run of files as one tar stream (`.tar?start=N&stop=M`, resumed after a cut), or one file by
itself (with Range). Nothing here touches the target: transports.py moves the staging folder in
when every file has been checked."""

from __future__ import annotations

import collections
import hashlib
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import ClientError, ServerError, TransferError, Unreachable, connection_problem
from .tar_reader import StreamCut, TarReader
from .target_state import signature
from .wire import WireError

if TYPE_CHECKING:
    from .api import Client

CHUNK = 1 << 20
# bytes per write(2). Linux gives a longer write large page-cache folios, which come from outside
# the per-CPU page lists: with twenty downloads at once (a CI fan-out) the same bytes cost three to
# four times the kernel time (20 processes each writing 200 MiB here: 1 MiB writes 4.9-6.8 s,
# 32 KiB writes 1.4-1.6 s; rsync writes 32 KiB). One download alone pays about 10 ms for it.
WRITE = 32 << 10
RETRIES = 3
BUSY_RETRIES = 15  # a 503 on a stream is waited out (Retry-After) this often, then files one by one
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _verifier(entry: dict) -> tuple[Any, str, str]:
    """(hash object, expected hex digest, its name) for a manifest file: BLAKE3 when the server
    lists it (about five times faster than sha256), else sha256."""
    if entry.get("blake3"):
        from blake3 import blake3

        return blake3(), entry["blake3"], "BLAKE3"
    return hashlib.sha256(), entry["sha256"], "sha256"


class FileSink:
    """One file being written into the staging folder, hashed as it is written."""

    def __init__(self, path: str, entry: dict, mode: int, umask: int):
        self.entry = entry
        # created with its mode (in a private staging folder): a chmod only when umask took bits
        self.mode = mode if mode & umask else None
        self.fd = os.open(path, _CREATE, mode)
        self.digest, self.expected, self.hash_name = _verifier(entry)
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view[:WRITE]):]
        self.written += len(data)

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.digest, self.expected, self.hash_name = _verifier(self.entry)
        self.written = 0

    def finish(self) -> os.stat_result:
        """Checks the file against the manifest (TransferError), sets its mode and closes it;
        the file's stat as it is left."""
        try:
            entry = self.entry
            if self.written != entry["size"]:
                raise TransferError(f"artifact {entry['path']}: got {self.written} bytes, the "
                                    f"manifest says {entry['size']}; the target was left untouched")
            got = self.digest.hexdigest()
            if got != self.expected:
                raise TransferError(f"artifact {entry['path']}: {self.hash_name} {got} does not "
                                    f"match the manifest's {self.expected}; the target was left "
                                    "untouched")
            if self.mode is not None:
                os.fchmod(self.fd, self.mode)
            return os.fstat(self.fd)
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Download:
    """Files of one build into the staging folder `root`; `bar.update(n)` hears of every byte."""

    def __init__(self, client: Client, project: str, build_id: str, root: str, bar,
                 mode_mask: int):
        self.client = client
        self.project = project
        self.build_id = build_id
        self.root = root
        self.bar = bar
        self.mode_mask = mode_mask
        self.partial: FileSink | None = None  # the file a stream broke in
        self.written: dict[str, list[int]] = {}  # path -> signature (target_state) of each file
        self.umask = os.umask(0)
        os.umask(self.umask)

    def _sink(self, entry: dict) -> FileSink:
        return FileSink(f"{self.root}/{entry['path']}", entry,
                        entry.get("mode", 0o644) & self.mode_mask, self.umask)

    def stream(self, entries: list[dict], files: list[int]) -> None:
        """The `files` (manifest indexes, ascending) from tar streams that end after the last of
        them, resumed after each cut."""
        pending = collections.deque(files)
        stop = files[-1] + 1
        busy = 0
        while pending:
            try:
                self._stream_once(entries, pending, stop)
            except (WireError, StreamCut, Unreachable) as e:
                # the file the stream broke in (or before) is finished on its own, with Range
                sink, self.partial = self.partial, None
                self.one(entries[pending.popleft()], sink, failed=e)
            except ServerError as e:
                if e.status != 503:
                    raise TransferError(f"the artifact stream of {self.project}/{self.build_id} "
                                        f"was refused: {e.message}") from None
                busy += 1
                if e.retry_after is not None and busy <= BUSY_RETRIES:
                    time.sleep(e.retry_after)  # streams are busy now: one is free again soon
                    continue
                for i in pending:  # the server keeps having no stream to spare: one GET each
                    self.one(entries[i])
                return

    def _stream_once(self, entries: list[dict], pending: collections.deque, stop: int) -> None:
        i = pending[0]
        url = f"artifacts/{self.project}/{self.build_id}.tar?start={i}&stop={stop}"
        with self.client.request("GET", url) as r:
            reader = TarReader(r.reused_pieces(CHUNK))
            while pending:
                member = reader.next_member()
                entry = entries[i] if i < len(entries) else None
                if member is None or entry is None or member.path != entry["path"] \
                        or member.type != entry["type"]:
                    expected = entry["path"] if entry else "its end"
                    found = member.path if member else "its end"
                    raise TransferError(f"the artifact stream has {found!r} where the manifest "
                                        f"has {expected!r}; the target was left untouched")
                if member.type == "file":
                    if member.size != entry["size"]:
                        raise TransferError(f"artifact {entry['path']}: the stream has "
                                            f"{member.size} bytes, the manifest says "
                                            f"{entry['size']}; the target was left untouched")
                    if i == pending[0]:
                        self.partial = sink = self._sink(entry)
                        for piece in reader.body(member.size):
                            sink.write(piece)
                            self.bar.update(len(piece))
                        self.partial = None
                        self._done(entry, sink.finish())
                        pending.popleft()
                    else:  # already in the target: read past it
                        for _ in reader.body(member.size):
                            pass
                elif member.type == "symlink" and member.target != entry["target"]:
                    raise TransferError(f"artifact {entry['path']}: the stream's link target "
                                        "differs from the manifest's; the target was left untouched")
                i += 1

    def one(self, entry: dict, sink: FileSink | None = None,
            failed: BaseException | None = None) -> None:
        """One file by itself, resuming with Range after a dropped connection; `sink` is what a
        stream had written of it before it broke (`failed`)."""
        url = f"artifacts/{self.project}/{self.build_id}/{quote(entry['path'])}"
        sink = sink or self._sink(entry)
        if entry["size"] == 0:  # nothing to ask for (its hash is still checked)
            self._done(entry, sink.finish())
            return
        attempts = 0 if failed is None else 1
        try:
            while True:
                headers = {"Range": f"bytes={sink.written}-"} if sink.written else {}
                try:
                    with self.client.request("GET", url, headers=headers) as r:
                        if sink.written and r.status_code != 206:  # no resume: start over
                            self.bar.update(-sink.written)
                            sink.restart()
                        for chunk in r.reused_pieces(CHUNK):
                            sink.write(chunk)
                            self.bar.update(len(chunk))
                    break
                except (WireError, ClientError) as e:
                    attempts += 1
                    # a broken connection or a server out of reach for a moment: ask again
                    transient = not isinstance(e, ClientError) or isinstance(e, Unreachable)
                    if attempts > RETRIES or not transient:
                        problem = e.message if isinstance(e, ClientError) \
                            else connection_problem(e)
                        tries = f" after {attempts} attempts" if attempts > 1 else ""
                        raise TransferError(f"download of {entry['path']} failed{tries}: "
                                            f"{problem}; the target was left untouched") from None
        except BaseException:
            sink.close()
            raise
        self._done(entry, sink.finish())

    def _done(self, entry: dict, st: os.stat_result) -> None:
        self.written[entry["path"]] = signature(st)
