"""Helpers for tests that need more than a fixture: test projects and mistryd as a process.
(A module of its own: `from conftest import ...` is ambiguous with several conftest.py files.)"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

TEST_PROJECTS = Path(__file__).parent / "projects"

# API tokens of the servers with access control, one per role
READ = "read-token-0123456789"
BUILD = "build-token-0123456789"
ADMIN = "admin-token-0123456789"
TOKENS = [{"name": "viewer", "token": READ, "role": "read"},
          {"name": "ci", "token": BUILD, "role": "build"},
          {"name": "ops", "token": ADMIN, "role": "admin"}]
BUILDER = "builder-token-0123456789"  # a remote builder's (docs/distributed.md)
CLUSTER_TOKENS = [*TOKENS, {"name": "builders", "token": BUILDER, "role": "builder"}]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def docker_cli(*args: str) -> subprocess.CompletedProcess:
    """The docker command against the machine's real engine (whatever DOCKER_HOST a test set)."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, check=False)


def copy_project(dest_root: Path, name: str, source: str | None = None) -> Path:
    """Copy tests/projects/<source or name> to dest_root/<name>."""
    dest = dest_root / name
    shutil.copytree(TEST_PROJECTS / (source or name), dest, symlinks=True)
    return dest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of `size` (mount's form: "4m") mounted on the new folder `path`: a disk that is
    soon full; unmounted afterwards."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


# --- mistryd as a separate process (crash, signal and load tests) ------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Setup:
    """A config file for a mistryd process: its projects, build folder, port and URL."""

    config: Path
    projects: Path
    builds: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> subprocess.Popen:
        return start_mistryd(self.config, self.port)


def make_setup(root: Path, projects: tuple[str, ...], **config) -> Setup:
    """root/config.json serving copies of the named test projects on a free loopback port."""
    (root / "projects").mkdir()
    for name in projects:
        copy_project(root / "projects", name)
    port = free_port()
    path = root / "config.json"
    path.write_text(json.dumps({"projects_path": "projects", "build_path": "builds",
                                "addr": f"127.0.0.1:{port}", "gc_interval": 0, **config}))
    return Setup(path, root / "projects", root / "builds", port)


def start_mistryd(config_path: Path, port: int) -> subprocess.Popen:
    """Start the real `mistryd` command; its log goes to mistryd.log beside the config."""
    log = open(Path(config_path).parent / "mistryd.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "mistryd.cli", "--config", str(config_path)],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/index/?limit=1", timeout=5)
            return proc
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or busy starting
            assert proc.poll() is None, (Path(config_path).parent / "mistryd.log").read_text()
            time.sleep(0.1)
    raise AssertionError("mistryd did not start")


def children_of(server_pid: int, name: str) -> list[int]:
    """The child processes of `mistryd` with this name (`mistryd-builder`, `mistryd-api`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if int(rest.split()[1]) == server_pid and comm == name:
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float = 120, interval: float = 0.2):
    """Poll `predicate` until it is true (for conditions only visible from outside a process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")


# --- a TCP proxy on loopback, to break connections on purpose ----------------------------------


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of a server. `forward` (for subclasses) sees each
    chunk and may record it or cut the connection after part of it, as a flaky network would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def forward(self, data: bytes, to_client: bool, sent: int) -> tuple[bytes, bool]:
        """What to pass on of `data` (after `sent` bytes in that direction), and whether to cut
        the connection after it."""
        return data, False

    def drop_all(self) -> int:
        """Cut every connection open now; returns how many sockets were closed."""
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            shut(s)
        return len(sockets)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.drop_all()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._open += [client, upstream]
                self.connections += 1
            for src, dst, to_client in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, to_client),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                data, cut = self.forward(data, to_client, sent)
                dst.sendall(data)
                sent += len(data)
                if cut:
                    break
        except OSError:
            pass
        finally:
            shut(src)
            shut(dst)


def relay(a: socket.socket, b: socket.socket) -> None:
    """Bytes both ways between two sockets, a thread each way, until either side ends; then
    both are shut."""
    for src, dst in ((a, b), (b, a)):
        threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        shut(src)
        shut(dst)


def shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class RedisServer:
    """A real `redis-server` on loopback, on a free port, with its data in `folder` and
    persistence on as docs/distributed.md asks for it (append-only file, fsync at every write):
    it can be stopped (gracefully or killed) and started again on the same port and data."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis  # the optional extra: only tests of the shared queue need it

        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start; see {self.folder / 'redis.log'}")
            time.sleep(0.05)
        client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis shuts down as on a service restart; SIGKILL: a crash."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.wait(30)
        self._process = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        client.flushall()
        client.close()
