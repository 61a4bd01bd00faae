"""Fixtures of the client suite: the real `mistry` command, sshd on loopback, a cutting proxy."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MISTRY = REPO / ".venv" / "bin" / "mistry"
MISTRYD = REPO / ".venv" / "bin" / "mistryd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def run_mistry(args: list[str], port: int | None = None, timeout: float = 180,
               env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the installed `mistry` command; MISTRY_HOST/MISTRY_PORT point at the server."""
    full_env = {**os.environ, "MISTRY_HOST": "127.0.0.1", **(env or {})}
    if port is not None:
        full_env["MISTRY_PORT"] = str(port)
    return subprocess.run([str(MISTRY), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=full_env, **kw)


@pytest.fixture
def mistry(start_server):
    """mistry(*args) against a server started with the default test projects of this suite."""
    servers = {}

    def run(*args: str, server=None, **kw) -> subprocess.CompletedProcess:
        if server is None:
            if "default" not in servers:
                servers["default"] = start_server(projects=CLIENT_PROJECTS)
            server = servers["default"]
        return run_mistry(list(args), port=port_of(server.url), **kw)

    run.server = lambda: servers.setdefault("default", start_server(projects=CLIENT_PROJECTS))
    return run


CLIENT_PROJECTS = ("hello", "client-params", "client-failing", "client-tree", "client-big")


@pytest.fixture
def signal_dir(tmp_path):
    """A folder mounted at /signal in build containers: `client-waiting` ends when `go` exists."""
    path = tmp_path / "signal"
    path.mkdir()
    return path


@pytest.fixture
def waiting_server(start_server, signal_dir):
    server = start_server(projects=("client-waiting", "hello"),
                          mounts={str(signal_dir): "/signal"})
    yield server
    (signal_dir / "go").touch()  # never leave a build container waiting


@dataclass
class Sshd:
    port: int
    ssh_config: Path

    def transport_args(self) -> list[str]:
        return ["--transport", "scp", "--transport-arg=-F", f"--transport-arg={self.ssh_config}"]


@pytest.fixture
def sshd(tmp_path):
    """sshd on a loopback port with its own host key and one authorized key (no system config)."""
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n")
    (d / "ssh_config").write_text(
        f"Host *\n  Port {port}\n  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()  # "Server listening on 127.0.0.1 port N." once it listens
        assert "Server listening" in line, line + proc.stderr.read() if proc.poll() else line
        yield Sshd(port, d / "ssh_config")
    finally:
        proc.terminate()
        proc.wait(10)


class CuttingProxy:
    """A TCP proxy to a server on loopback that cuts the first `cuts` connections after
    `cut_after` bytes of the server's answer: a dropped link, made on purpose."""

    def __init__(self, upstream_port: int, cut_after: int, cuts: int):
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cuts_done = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self.connections += 1
                cut = self.cuts_left > 0
                if cut:
                    self.cuts_left -= 1
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client,
                                                      self.cut_after if cut else None),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    with self._lock:
                        self.cuts_done += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@pytest.fixture
def cutting_proxy():
    proxies: list[CuttingProxy] = []

    def make(upstream_port: int, cut_after: int, cuts: int) -> CuttingProxy:
        proxies.append(CuttingProxy(upstream_port, cut_after, cuts))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll a condition that has no event to wait on (a file appearing in another process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
