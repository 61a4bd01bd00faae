"""What the artifact-delivery measurements of issue 11 share: a server on a loopback address of
their own with a plain rsync daemon beside it on port 873, the commands of the two clients (ours,
`mistry build`, and upstream's Go client over rsync), fetches timed one command at a time, and a
check of every fetched tree so that a fast wrong result cannot pass.

Upstream's client reaches an rsync daemon on port 873 only (it has no port option). Each run takes
an address of its own in 127.0.0.0/8 for its server and daemon, so it never meets another rsync
daemon on 127.0.0.1:873. The daemon is the plain one upstream's deployments run (module `mistry`
rooted at build_path, read-only): the baseline is upstream's delivery, not mistryd's checked one.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .harness import BIN, BenchServer, Env, sh, upstream
from .stats import timed

RSYNC_PORT = 873  # upstream's client has no other
WHOLE_HASH_LIMIT = 16 << 20  # larger files are checked by a few 1 MiB windows
WINDOW = 1 << 20


def loopback_host() -> str:
    """An address of 127.0.0.0/8 (all of it is loopback on Linux) where port 873 is free."""
    for _ in range(50):
        host = f"127.{random.randint(64, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, RSYNC_PORT))
            except PermissionError:
                raise RuntimeError("the side-by-side with upstream's client needs root: it reaches "
                                   f"rsync on port {RSYNC_PORT} only") from None
            except OSError:
                continue
        return host
    raise RuntimeError(f"no loopback address with port {RSYNC_PORT} free in 50 tries")


def start_rsync_daemon(env: Env, build_path: Path, host: str) -> None:
    """A plain read-only rsync daemon, module `mistry` at build_path, on host:873, stopped at
    the end of the run."""
    home = env.dir("rsyncd")
    conf = home / "rsyncd.conf"
    conf.write_text(f"pid file = {home / 'rsyncd.pid'}\nuid = 0\ngid = 0\nuse chroot = no\n\n"
                    f"[mistry]\npath = {build_path}\nread only = yes\n")
    with open(home / "rsyncd.stderr", "wb") as err:
        proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                 f"--address={host}", f"--port={RSYNC_PORT}",
                                 f"--log-file={home / 'rsyncd.log'}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    env.stack.callback(_stop, proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rsync --daemon on {host}:{RSYNC_PORT} exited {proc.returncode}: "
                               f"{(home / 'rsyncd.stderr').read_text()[-1000:]}")
        try:
            with socket.create_connection((host, RSYNC_PORT), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"rsync --daemon did not listen on {host}:{RSYNC_PORT} within 10 s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Side:
    """The server both clients talk to (mistryd: the same cache hit for both) and how each
    client's command for a project, params and target looks."""

    srv: BenchServer
    upstream: Path

    def mistry(self, project: str, params: dict[str, str], target: Path) -> list[str]:
        return [str(BIN / "mistry"), "build", "--project", project, "--target", str(target),
                "--host", self.srv.host, "--port", str(self.srv.port), "--transport", "http",
                "--", *_params(params)]

    def upstream_rsync(self, project: str, params: dict[str, str], target: Path) -> list[str]:
        return [str(self.upstream), "build", "--project", project, "--target", str(target),
                "--host", self.srv.host, "--port", str(self.srv.port), "--transport", "rsync",
                "--", *_params(params)]


def _params(params: dict[str, str]) -> list[str]:
    return [f"--{k}={v}" for k, v in params.items()]  # the form both clients read


def side_by_side(env: Env, projects: dict[str, int], name: str) -> Side:
    """mistryd on a loopback address of its own, a plain rsync daemon on its port 873."""
    upstream_mistry = upstream("mistry", "UPSTREAM_MISTRY")
    host = loopback_host()
    srv = env.server(projects, name, host=host)
    # upstream's client finds the rsync path by the project's name in the build's Path: the
    # first occurrence, so no folder above the builds may contain it
    for project in projects:
        if project in str(srv.build_path):
            raise RuntimeError(f"the bench's build_path {srv.build_path} contains the project name "
                               f"{project!r}; upstream's client would ask rsync for a wrong path")
    start_rsync_daemon(env, srv.build_path, host)
    return Side(srv, upstream_mistry)


class Targets:
    """Empty target folders on the bench's disk, one per fetch (the staging folder of `mistry`
    goes beside its target, so all stay on one file system)."""

    def __init__(self, env: Env):
        self.root = env.dir("targets")
        self.count = 0

    def new(self) -> Path:
        self.count += 1
        path = self.root / f"t{self.count}"
        path.mkdir()
        return path


def run_timed(cmd: list[str]) -> float:
    """The whole command's wall time in ms (it must succeed), from a settled disk."""
    settle()
    return timed(lambda: sh(cmd))


def settle() -> None:
    """Writes out what earlier fetches left in the page cache (not timed): each fetch writes
    200 MB, and once a few GB wait to be written the kernel writes them back under whichever
    command runs then, which made a fetch take 0.2 s or 0.8 s by turns. Either client starts
    from the same clean state."""
    os.sync()


def builds_started(srv: BenchServer) -> float:
    """The server's count of builds: a fetch that is not a cache hit would raise it."""
    return sum(srv.metric("mistry_builds_started", project=p.name)
               for p in srv.projects_path.iterdir())


# --- checking a fetched tree against the build's artifacts ------------------------------------

Entry = tuple[str, int | str, int]  # kind, size or link target, permission bits


def listing(root: Path) -> dict[str, Entry]:
    """Every entry under root (not root itself): relative path -> kind, size/target, mode."""
    out: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", st.st_size, stat.S_IMODE(st.st_mode))
    return out


class Expected:
    """A build's artifacts as a fetched copy must have them: the listing, and checksums of a few
    files (the largest, the smallest non-empty and some picked with a fixed seed)."""

    def __init__(self, source: Path, samples: int = 6):
        self.source = source
        self.entries = listing(source)
        files = sorted((e[1], rel) for rel, e in self.entries.items() if e[0] == "file")
        picked = {rel for _, rel in files[-1:]}
        nonempty = [rel for size, rel in files if size]
        if nonempty:
            picked.add(nonempty[0])
        rng = random.Random(11)
        picked |= set(rng.sample([rel for _, rel in files], min(samples, len(files))))
        self.sums = {rel: checksum(source / rel) for rel in sorted(picked)}
        self.files = len(files)
        self.bytes = sum(size for size, _ in files)

    def check(self, target: Path) -> None:
        got = listing(target)
        if got != self.entries:
            missing = sorted(set(self.entries) - set(got))[:3]
            extra = sorted(set(got) - set(self.entries))[:3]
            differ = sorted(r for r in set(got) & set(self.entries) if got[r] != self.entries[r])[:3]
            raise RuntimeError(
                f"{target} differs from the build's artifacts {self.source}: missing {missing}, "
                f"extra {extra}, different {[(r, got[r], self.entries[r]) for r in differ]}")
        for rel, want in self.sums.items():
            if checksum(target / rel) != want:
                raise RuntimeError(f"{target / rel}: content differs from {self.source / rel}")


def checksum(path: Path) -> str:
    """sha256 of the file, or for a large one of its size and a few 1 MiB windows (start, end
    and two in between), so twenty 200 MiB copies are checked in well under a second each."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_HASH_LIMIT:
            h.update(f.read())
            return h.hexdigest()
        h.update(str(size).encode())
        for at in (0, size // 3, 2 * size // 3, size - WINDOW):
            f.seek(at)
            h.update(f.read(WINDOW))
    return h.hexdigest()
