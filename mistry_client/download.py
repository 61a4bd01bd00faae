"""Placing a run of a build's artifact entries (folders, files, links) into a staging folder over
HTTP, each file checked as it is written: many files as one tar stream (`.tar?start=N&stop=M`,
resumed after a cut), a few one by one (with Range). Nothing here touches the target:
transports.py moves the staging folder in when every file has been checked."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator, Sequence
from urllib.parse import quote

from . import preallocate
from .errors import ClientError, ServerError, TransferError, Unreachable, connection_problem
from .tar_reader import StreamCut, TarReader
from .target_state import signature
from .wire import WireError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import Client
    from .manifest import Manifest
    from .wire import Response

CHUNK = 1 << 20
SPLICE_FROM = 1 << 20  # a smaller file is read and written (a pipe costs more than it saves)
# bytes per write(2), and per splice(2) into a file. Linux gives a longer write large page-cache
# folios, which come from outside the per-CPU page lists (in a VM, often memory the host has to
# hand back first): with twenty downloads at once (a CI fan-out) the same bytes cost three to four
# times the kernel time (20 processes each writing 200 MiB here: 1 MiB writes 4.9-6.8 s, 32 KiB
# writes 1.4-1.6 s; rsync writes 32 KiB). One download alone pays about 10 ms for it. A splice
# moves pages without a copy through the process, so fewer and longer calls pay off there: 20
# spliced downloads at once took 5.3 s in 1 MiB calls, 3.3 s in 32 KiB and 2.9 s in 128 KiB
# (reading and writing 3.6 s); one alone 153, 240 and 177 ms (reading and writing 255 ms).
WRITE = 32 << 10
SPLICE_WRITE = 128 << 10
RETRIES = 3
BUSY_RETRIES = 15  # a 503 on a stream is waited out (Retry-After) this often, then files one by one
_CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class FileSink:
    """File `i` of the manifest being written into the staging folder, hashed as it is written."""

    def __init__(self, path: str, manifest: Manifest, i: int, mode: int, umask: int):
        self.manifest = manifest
        self.i = i
        # created with its mode (in a private staging folder): a chmod only when umask took bits
        self.mode = mode if mode & umask else None
        self.fd = os.open(path, _CREATE, mode)
        self.digest, self.expected, self.hash_name = manifest.verifier(i)
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        self._count(data)
        view = memoryview(data)
        at = self.written - len(data)
        while view:
            n = os.pwrite(self.fd, view[:WRITE], at)
            view, at = view[n:], at + n

    def receive(self, r: Response) -> Iterator[int]:
        """The body of `r` appended to the file; yields the size of each piece once it is
        written and hashed. A large body on a plain connection goes from the socket into the
        file inside the kernel (Response.splice_into) and is hashed as read back from the page
        cache, one piece at a time while it is still in the CPU's cache. A large body's blocks
        are reserved first (preallocate.py)."""
        left = self.manifest.sizes[self.i] - self.written
        if left >= preallocate.FROM:
            preallocate.reserve(self.fd, self.written, left)
        if r.spliceable() and left >= SPLICE_FROM:
            back = memoryview(bytearray(CHUNK))
            for n in r.splice_into(self.fd, self.written, CHUNK, SPLICE_WRITE):
                at, end = self.written, self.written + n
                while at < end:
                    got = os.preadv(self.fd, [back[:end - at]], at)
                    if not got:
                        raise TransferError(f"artifact {self.manifest.paths[self.i]}: the "
                                            "staging file lost what was written into it")
                    self._count(back[:got])
                    at += got
                yield n
        else:
            for piece in r.reused_pieces(CHUNK):
                self.write(piece)
                yield len(piece)

    def _count(self, data: bytes | memoryview) -> None:
        """`data` is the file's next bytes: hashed and counted; TransferError as soon as there
        are more than the manifest says (a server that would fill the disk)."""
        self.written += len(data)
        if self.written > self.manifest.sizes[self.i]:
            raise TransferError(f"artifact {self.manifest.paths[self.i]}: got more than the "
                                f"manifest's {self.manifest.sizes[self.i]} bytes; the target was "
                                "left untouched")
        self.digest.update(data)

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        self.digest, self.expected, self.hash_name = self.manifest.verifier(self.i)
        self.written = 0

    def finish(self) -> os.stat_result:
        """Checks the file against the manifest (TransferError), sets its mode and closes it;
        the file's stat as it is left."""
        try:
            path, size = self.manifest.paths[self.i], self.manifest.sizes[self.i]
            if self.written != size:
                raise TransferError(f"artifact {path}: got {self.written} bytes, the manifest "
                                    f"says {size}; the target was left untouched")
            got = self.digest.hexdigest()
            if got != self.expected:
                raise TransferError(f"artifact {path}: {self.hash_name} {got} does not match "
                                    f"the manifest's {self.expected}; the target was left "
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
    """Entries of one build's manifest into the staging folder `root`; `bar.update(n)` hears of
    every byte."""

    def __init__(self, client: Client, project: str, build_id: str, root: str,
                 manifest: Manifest, bar, mode_mask: int):
        self.client = client
        self.project = project
        self.build_id = build_id
        self.root = root
        self.manifest = manifest
        self.bar = bar
        self.mode_mask = mode_mask
        self.partial: FileSink | None = None  # the file a stream broke in
        self.written: dict[int, Sequence[int]] = {}  # file index -> signature (target_state)
        self.umask = os.umask(0)
        os.umask(self.umask)

    def place(self, run: list[int]) -> None:
        """The entries `run` (ascending manifest indexes): directories, then files (tar streams
        for STREAM_FROM files or more, else one GET each), then links. A folder an entry lies
        in is made when it is missing (another run may hold it). Links come last and nothing
        is written through one: the manifest puts nothing beneath a link (Manifest.of), and
        files are opened with O_NOFOLLOW|O_EXCL."""
        kinds, paths = self.manifest.kinds, self.manifest.paths
        files = [i for i in run if kinds[i] == "file"]
        for i in run:
            if kinds[i] == "dir":
                _make_dir(f"{self.root}/{paths[i]}")
        if len(files) >= STREAM_FROM:
            self.stream(files)
        else:
            for i in files:
                self.one(i)
        for i in run:
            if kinds[i] == "symlink":
                path = f"{self.root}/{paths[i]}"
                _make_dir(path.rpartition("/")[0])
                os.symlink(self.manifest.targets[i], path)

    def _sink(self, i: int) -> FileSink:
        path = f"{self.root}/{self.manifest.paths[i]}"
        mode = self.manifest.modes[i] & self.mode_mask
        try:
            return FileSink(path, self.manifest, i, mode, self.umask)
        except FileNotFoundError:  # its folder is another run's, not made yet
            _make_dir(path.rpartition("/")[0])
            return FileSink(path, self.manifest, i, mode, self.umask)

    def stream(self, files: list[int]) -> None:
        """The `files` (manifest indexes, ascending) from tar streams that end after the last of
        them, resumed after each cut."""
        pending = collections.deque(files)
        stop = files[-1] + 1
        busy = 0
        while pending:
            try:
                self._stream_once(pending, stop)
            except (WireError, StreamCut, Unreachable) as e:
                # the file the stream broke in (or before) is finished on its own, with Range
                sink, self.partial = self.partial, None
                self.one(pending.popleft(), sink, failed=e)
            except ServerError as e:
                if e.status != 503:
                    raise TransferError(f"the artifact stream of {self.project}/{self.build_id} "
                                        f"was refused: {e.message}") from None
                busy += 1
                if e.retry_after is not None and busy <= BUSY_RETRIES:
                    time.sleep(e.retry_after)  # streams are busy now: one is free again soon
                    continue
                for i in pending:  # the server keeps having no stream to spare: one GET each
                    self.one(i)
                return

    def _stream_once(self, pending: collections.deque, stop: int) -> None:
        m = self.manifest
        i = pending[0]
        url = f"artifacts/{self.project}/{self.build_id}.tar?start={i}&stop={stop}"
        with self.client.request("GET", url) as r:
            reader = TarReader(r.reused_pieces(CHUNK))
            while pending:
                member = reader.next_member()
                if member is None or i >= len(m) or member.path != m.paths[i] \
                        or member.type != m.kinds[i]:
                    expected = m.paths[i] if i < len(m) else "its end"
                    found = member.path if member else "its end"
                    raise TransferError(f"the artifact stream has {found!r} where the manifest "
                                        f"has {expected!r}; the target was left untouched")
                if member.type == "file":
                    if member.size != m.sizes[i]:
                        raise TransferError(f"artifact {m.paths[i]}: the stream has "
                                            f"{member.size} bytes, the manifest says "
                                            f"{m.sizes[i]}; the target was left untouched")
                    if i == pending[0]:
                        self.partial = sink = self._sink(i)
                        for piece in reader.body(member.size):
                            sink.write(piece)
                            self.bar.update(len(piece))
                        self.partial = None
                        self.written[i] = signature(sink.finish())
                        pending.popleft()
                    else:  # already in the target: read past it
                        for _ in reader.body(member.size):
                            pass
                elif member.type == "symlink" and member.target != m.targets[i]:
                    raise TransferError(f"artifact {m.paths[i]}: the stream's link target "
                                        "differs from the manifest's; the target was left untouched")
                i += 1

    def one(self, i: int, sink: FileSink | None = None,
            failed: BaseException | None = None) -> None:
        """File `i` by itself, resuming with Range after a dropped connection; `sink` is what a
        stream had written of it before it broke (`failed`)."""
        path = self.manifest.paths[i]
        url = f"artifacts/{self.project}/{self.build_id}/{quote(path)}"
        sink = sink or self._sink(i)
        if self.manifest.sizes[i] == 0:  # nothing to ask for (its hash is still checked)
            self.written[i] = signature(sink.finish())
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
                        for n in sink.receive(r):
                            self.bar.update(n)
                    break
                except (WireError, ClientError) as e:
                    attempts += 1
                    # a broken connection or a server out of reach for a moment: ask again
                    transient = not isinstance(e, ClientError) or isinstance(e, Unreachable)
                    if attempts > RETRIES or not transient:
                        problem = e.message if isinstance(e, ClientError) \
                            else connection_problem(e)
                        tries = f" after {attempts} attempts" if attempts > 1 else ""
                        raise TransferError(f"download of {path} failed{tries}: "
                                            f"{problem}; the target was left untouched") from None
        except BaseException:
            sink.close()
            raise
        self.written[i] = signature(sink.finish())


STREAM_FROM = 8  # fewer files than this: one GET each (a stream costs a pool slot on the server)


def _make_dir(path: str) -> None:
    """`path` and any folder above it that is missing (in the private staging folder: another
    download process may make the same at the same time)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)
