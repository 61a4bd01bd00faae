"""Fixtures of the client suite: the real `mistry` command, sshd on loopback, a cutting proxy."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from client_helpers import CLIENT_PROJECTS, CuttingProxy, free_port, port_of, run_mistry


@pytest.fixture
def mistry(start_server):
    """mistry(*args) against a server started with the default test projects of this suite."""
    servers = {}

    def default_server():
        if "default" not in servers:
            servers["default"] = start_server(projects=CLIENT_PROJECTS)
        return servers["default"]

    def run(*args: str, server=None, **kw) -> subprocess.CompletedProcess:
        return run_mistry(list(args), port=port_of((server or default_server()).url), **kw)

    run.server = default_server
    return run


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


@pytest.fixture
def cutting_proxy():
    proxies: list[CuttingProxy] = []

    def make(upstream_port: int, cut_after: int, cuts: int) -> CuttingProxy:
        proxies.append(CuttingProxy(upstream_port, cut_after, cuts))
        return proxies[-1]

    yield make
    for p in proxies:
        p.close()


