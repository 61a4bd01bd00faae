"""A build's stdout and stderr, read by mistryd itself in the order the build wrote them.

Docker copies a container's stdout and stderr pipes in two goroutines of its own, so two writes a
few microseconds apart across the two streams (`echo a; echo b >&2`) come out in either order
(docs/web.md, "Log order"). Instead, the build's command runs with its stdout and stderr on two
FIFOs that mistryd reads in one thread, through one edge-triggered epoll set. The kernel queues a
FIFO that becomes readable behind the ones that became readable before it, so the log has the
order written whenever the build does not switch streams twice within one read of mistryd's (a
few microseconds): `echo a; echo b >&2`, a compiler's warnings among its progress lines, any real
build. A build that alternates faster than that still has each stream's own order, and a run of
one stream's writes may come ahead of the other's; `tty: true` is the one channel that never
reorders (docker_runner).

The command is started by a static busybox shell mounted into the container (START: the image's
program found in its PATH, then `exec` with the output on the FIFOs), so the image needs no shell
of its own, the build's PID 1 is its own command as before, and what the image's entrypoint and
command were is kept. The shell is a copy
of the host's in build_path's state folder, because Docker mounts host paths and build_path is
the one folder a mistryd in a container shares with the host at the same path. Without a static
busybox (Debian's busybox-static; `make setup` installs it) builds run with Docker's streams, as
before.

Everything the container sees of this is read-only: the FIFOs' folder and the shell. A write end
of each FIFO is held by mistryd until the container has ended, so a build that has not opened its
output yet is not an end of it; after that, the end of both is the end of the output.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import shutil
import struct
import threading
from pathlib import Path

from .logs import STDERR, STDOUT, LogSink

log = logging.getLogger("mistryd")

BUSYBOX = Path("/bin/busybox")
IN_CONTAINER = "/.mistryd"  # the shell at /.mistryd/busybox, the FIFOs in /.mistryd/log/
FOLDER = ".output"  # beside the build's data folder, on the host
READ = 64 << 10
TAIL = 1 << 20  # stderr kept for the record's ContainerStderr, as Docker's was
FINISH_WAIT = 10.0  # seconds the reader may take to drain after the container ended

# Run "$@" as Docker runs a container's command, with its output on the FIFOs. busybox's shell
# prefers its own applets to the image's programs for a bare name (`sh`, `seq`, `date`), so the
# command is looked up in the image's PATH here and run by its path, under the name it was given.
START = f"""name=$1; shift; path=$name
case $name in
  */*) ;;
  *) path=; IFS=:
     for dir in ${{PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}}; do
       if [ -f "$dir/$name" ] && [ -x "$dir/$name" ]; then path=$dir/$name; break; fi
     done
     unset IFS
     if [ -z "$path" ]; then echo "$name: executable file not found in \\$PATH" >&2; exit 127; fi;;
esac
exec -a "$name" "$path" "$@" >{IN_CONTAINER}/log/out 2>{IN_CONTAINER}/log/err"""


@functools.cache
def static_busybox(state_dir: Path) -> Path | None:
    """A copy of the host's busybox in `state_dir` when it is a static executable (it must run in
    any image); None otherwise, said once in the log."""
    try:
        if _static_elf(BUSYBOX):
            return _copied(BUSYBOX, state_dir / BUSYBOX.name)
        why = "is not statically linked"
    except FileNotFoundError:
        why = "is not installed"
    except (OSError, ValueError) as e:
        why = f"cannot be read or copied ({e})"
    log.warning("mistryd: %s %s (Debian's busybox-static): build logs keep Docker's order between "
                "stdout and stderr (docs/web.md, Log order)", BUSYBOX, why)
    return None


def _copied(source: Path, copy: Path) -> Path:
    """`copy` as `source` is now (made again when their size or time differ; atomically, as
    several processes may ask at once)."""
    st = source.stat()
    try:
        had = copy.stat()
        if (had.st_size, had.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
            return copy
    except FileNotFoundError:
        pass
    copy.parent.mkdir(parents=True, exist_ok=True)
    part = copy.with_name(f".{copy.name}.{os.getpid()}.{threading.get_ident()}")
    shutil.copy2(source, part)
    os.chmod(part, 0o755)
    os.replace(part, copy)
    return copy


def _static_elf(path: Path) -> bool:
    """Whether `path` is an ELF executable without an interpreter (PT_INTERP): no libc needed."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            raise ValueError("not a 64-bit ELF file")
        order = "<" if head[5] == 1 else ">"
        phoff, = struct.unpack_from(order + "Q", head, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        kind, = struct.unpack_from(order + "I", table, i * phentsize)
        if kind == 3:  # PT_INTERP
            return False
    return True


class OrderedOutput:
    """The FIFOs of one container run, their reader and what the container needs to use them.
    `start` before the container starts; `finish` once it has ended; `close` always."""

    def __init__(self, folder: Path, sink: LogSink, shell: Path):
        self.folder = folder
        self._sink = sink
        self._shell = shell
        self._stderr = bytearray()
        self._fds: dict[int, str] = {}  # read end -> stream
        self._keep: list[int] = []  # mistryd's own write ends, closed by finish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True,
                                        name=f"output-{folder.parent.name[:16]}")
        shutil.rmtree(folder, ignore_errors=True)  # a crashed run's
        folder.mkdir(mode=0o755)
        self._epoll = select.epoll()
        try:
            for name, stream in (("out", STDOUT), ("err", STDERR)):
                path = folder / name
                os.mkfifo(path, 0o600)
                os.chmod(path, 0o666)  # the build's user writes it, whoever that is
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                self._fds[fd] = stream
                self._keep.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        except BaseException:
            self.close()
            raise

    def container_options(self, argv: list[str]) -> dict:
        """Docker's create options that run `argv` (the image's entrypoint and command, or the
        job's) with its output on the FIFOs."""
        return {
            "entrypoint": [f"{IN_CONTAINER}/busybox", "sh", "-c", START, "mistryd-build"],
            "command": argv,
            "volumes": {str(self.folder): {"bind": f"{IN_CONTAINER}/log", "mode": "ro"},
                        str(self._shell): {"bind": f"{IN_CONTAINER}/busybox", "mode": "ro"}},
        }

    def start(self) -> None:
        self._thread.start()

    @property
    def stderr(self) -> bytes:
        """The last TAIL bytes the build wrote to stderr."""
        return bytes(self._stderr)

    def finish(self) -> None:
        """The container has ended: read what is left, to the end of both streams."""
        for fd in self._keep:
            os.close(fd)
        self._keep.clear()
        self._thread.join(FINISH_WAIT)
        if not self.ended:  # a process outside the container holds a write end
            log.warning("mistryd: the output of %s did not end %g s after its container did; "
                        "the log ends here", self.folder.parent, FINISH_WAIT)

    @property
    def ended(self) -> bool:
        """Whether the reader has reached the end of both streams (or stopped)."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        for fd in self._keep:
            os.close(fd)
        self._keep.clear()
        if self._thread.is_alive():
            self._thread.join(FINISH_WAIT)
        if not self._thread.is_alive():
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
            self._epoll.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _read(self) -> None:
        try:
            self._read_to_the_end()
        except Exception:  # noqa: BLE001 - the build goes on; its log is cut short here
            log.exception("mistryd: reading the output of %s failed", self.folder.parent)

    def _read_to_the_end(self) -> None:
        open_ends = set(self._fds)
        while open_ends and not self._stop.is_set():
            try:
                events = self._epoll.poll(0.5)
            except InterruptedError:
                continue
            for fd, _ in events:  # in the order they became readable
                if fd in open_ends and not self._drain(fd):
                    open_ends.discard(fd)

    def _drain(self, fd: int) -> bool:
        """Read `fd` until it is empty; False at its end (no writer left). A read shorter than
        asked emptied it: what is written after that is a new event, queued behind any the
        other stream had meanwhile, so it is not read here (that would take a later line of
        this stream ahead of an earlier one of the other); only whether the writers are gone
        is looked at, without reading."""
        stream = self._fds[fd]
        while True:
            try:
                data = os.read(fd, READ)
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return False
            self._sink.write(data, stream)
            if stream == STDERR:
                self._stderr += data
                del self._stderr[:-TAIL]
            if len(data) < READ:
                return not _writers_gone(fd)


def _writers_gone(fd: int) -> bool:
    """No writer holds the FIFO and nothing is left in it (a hang-up without data to read)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    mask = next((events for _, events in poller.poll(0)), 0)
    return bool(mask & select.POLLHUP) and not mask & select.POLLIN
