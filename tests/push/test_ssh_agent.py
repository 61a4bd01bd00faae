"""The per-job ssh-agent (docs/push.md, "ssh-agent"): a real sshd on 127.0.0.1 serves a bare
repository through git-shell to one deploy key; a push build fetches over ssh through its own
agent, and the command in the container uses that agent too. The agent ends with the build, and
the key's bytes are nowhere in the build folder or the log."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from push_builds import finished
from support import free_port, wait_for

from mistryd.push.agent import AgentFailed, SshAgent

REPO = "example-org/example-repo"
BUILD_UID = 65532


def keygen(path: Path, comment: str = "deploy") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)
    return path


def fingerprint(key: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(key)], check=True, capture_output=True,
                          text=True).stdout.split()[1]


@dataclass
class SshGitServer:
    port: int
    key: Path  # the deploy key (private), the only one sshd accepts
    base: Path
    log: Path

    def url(self, bare: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{bare}"


@pytest.fixture
def ssh_git_server(tmp_path):
    """sshd on a free loopback port: the deploy key logs in as root and can only run git-shell
    (a forced command), so it can fetch from bare repositories and do nothing else."""
    base = tmp_path / "ssh"
    base.mkdir()
    host_key = keygen(base / "host_key", "host")
    key = keygen(base / "deploy_key")
    public = (base / "deploy_key.pub").read_text().strip()
    (base / "authorized_keys").write_text(
        'command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"",no-port-forwarding,'
        f"no-X11-forwarding,no-agent-forwarding,no-pty {public}\n")
    port = free_port()
    config = base / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {base / 'authorized_keys'}", f"PidFile {base / 'sshd.pid'}",
        "UsePAM no", "StrictModes no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "AllowUsers root", "LogLevel VERBOSE", ""]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    log = base / "sshd.log"
    with open(log, "wb") as out:
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=out,
                                stderr=out)

    def listening() -> bool:
        assert sshd.poll() is None, log.read_text()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=20, interval=0.05)
    yield SshGitServer(port, key, base, log)
    sshd.terminate()
    sshd.wait(10)


def _running(pid: int) -> bool:
    try:
        return "ssh-agent" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return False


def test_a_push_build_fetches_and_runs_with_its_own_agent(start_server, git_server,
                                                         ssh_git_server):
    repo = git_server()
    commit = repo.commit({"README": "over ssh\n"}, branch="production")
    failing = repo.commit({"README": "fails\n"}, branch="staging")
    url = ssh_git_server.url(repo.bare)
    inside = ("ssh-add -l; echo \"socket=$SSH_AUTH_SOCK\"; "
              "GIT_SSH_COMMAND='ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' "
              f"git ls-remote {url} refs/heads/production; cat README")
    # host networking: the command reaches the loopback sshd with the agent, as a deploy would
    srv = start_server(projects=(), network_mode="host", ssh_key=str(ssh_git_server.key),
                       repositories={REPO: {"url": url, "branches": {
                           "production": inside, "staging": "ssh-add -l && exit 3"}}})
    r = requests.post(f"{srv.url}/", json={"scm": "git", "repositoryUrl": url, "project": REPO,
                                            "target": "production"}, timeout=60)
    assert r.status_code == 202, r.text  # the head came from ls-remote over ssh (the key file)
    assert r.json()["commit"] == commit
    info = finished(r.json())["BuildInfo"]
    log = info["ContainerStdouterr"]
    assert info["Status"] == "succeeded", log[-3000:]
    deploy = fingerprint(ssh_git_server.key)
    pid = int(re.search(r"ssh-agent (\d+) holds the deploy key " + re.escape(deploy), log)[1])
    assert "git fetch" in log and "over ssh" in log
    assert re.search(r"^256 " + re.escape(deploy) + " deploy \\(ED25519\\)$", log, re.M), log
    assert "socket=/run/mistryd/ssh-agent.sock" in log
    assert f"{commit}\trefs/heads/production" in log  # the container's own ssh login
    # the host's fetch and the container's ls-remote both logged in with the deploy key
    accepted = ssh_git_server.log.read_text().count("Accepted publickey for root from 127.0.0.1")
    assert accepted >= 3, ssh_git_server.log.read_text()
    assert not _running(pid)

    # a failing build ends its agent too
    r = requests.post(f"{srv.url}/", json={"scm": "git", "repositoryUrl": url, "project": REPO,
                                            "target": "staging", "commit": failing}, timeout=60)
    info = finished(r.json())["BuildInfo"]
    assert info["Status"] == "failed" and info["ExitCode"] == 3, info["ContainerStdouterr"][-2000:]
    assert deploy in info["ContainerStdouterr"]
    failed_pid = int(re.search(r"ssh-agent (\d+) holds", info["ContainerStdouterr"])[1])
    assert failed_pid != pid and not _running(failed_pid)

    # the key's bytes (and its path) are nowhere under build_path
    secret_lines = [line.encode() for line in ssh_git_server.key.read_text().splitlines()
                    if len(line) > 30 and not line.startswith("-----")]
    assert secret_lines
    leaks = []
    for path in srv.build_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(s in data for s in secret_lines) or str(ssh_git_server.key).encode() in data:
                leaks.append(path)
    assert leaks == []


def test_the_agent_serves_its_uid_and_root_only(tmp_path):
    key = keygen(tmp_path / "key")
    agent = SshAgent.start(key, owner=(BUILD_UID, BUILD_UID), lifetime=60)
    try:
        env = {"PATH": os.environ["PATH"], "SSH_AUTH_SOCK": str(agent.socket)}

        def list_as(uid: int) -> subprocess.CompletedProcess:
            return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                                   "ssh-add", "-l"], env=env, capture_output=True, text=True)

        assert agent.fingerprint == fingerprint(key)
        assert fingerprint(key) in list_as(BUILD_UID).stdout
        assert fingerprint(key) in list_as(0).stdout  # the server's git
        other = list_as(BUILD_UID + 1)
        assert other.returncode != 0 and fingerprint(key) not in other.stdout
        st = os.stat(agent.socket)
        assert (st.st_uid, st.st_mode & 0o777) == (BUILD_UID, 0o600)
        assert os.stat(agent.folder).st_mode & 0o777 == 0o700
    finally:
        agent.stop()
    assert not _running(agent.pid) and not agent.folder.exists()


def test_a_key_the_agent_cannot_take_fails_clearly_and_leaves_nothing(tmp_path):
    bad = tmp_path / "not-a-key"
    bad.write_text("this is not a private key\n")
    bad.chmod(0o600)
    started = time.monotonic()
    with pytest.raises(AgentFailed) as e:
        SshAgent.start(bad, owner=(BUILD_UID, BUILD_UID))
    assert "ssh-add could not add ssh_key" in e.value.message and str(bad) not in e.value.message
    assert time.monotonic() - started < 30
    assert _my_agents() == []


def _my_agents() -> list[int]:
    """The ssh-agent processes this test process started and that still run."""
    mine = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        if fields.get("Name") == "ssh-agent" and int(fields["PPid"]) == os.getpid():
            mine.append(int(status.parent.name))
    return mine


def test_the_agent_ends_when_the_server_dies(tmp_path):
    """Should `stop` never be reached (the server killed), the agent ends within 10 s."""
    key = keygen(tmp_path / "key")
    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from mistryd.push.agent import SshAgent\n"
            f"a = SshAgent.start(Path({str(key)!r}))\n"
            "print(a.pid, a.folder, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pid_text, folder = parent.stdout.readline().split()
    pid = int(pid_text)
    assert _running(pid)
    parent.kill()
    parent.wait()
    wait_for(lambda: not _running(pid), timeout=30, interval=0.1)
    assert not (Path(folder) / "agent.sock").exists()  # the agent removed its socket
    shutil.rmtree(folder)  # the folder is the killed server's to remove


def test_git_shell_refuses_anything_but_git(ssh_git_server, tmp_path):
    """The fixture's key can fetch and nothing else (so a test cannot pass by a shell)."""
    out = subprocess.run(["ssh", "-p", str(ssh_git_server.port), "-i", str(ssh_git_server.key),
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "BatchMode=yes", "root@127.0.0.1", "id"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "uid=" not in out.stdout
    bare = tmp_path / "probe.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    env = {**os.environ, "GIT_SSH_COMMAND": f"ssh -i {ssh_git_server.key} -o BatchMode=yes "
                                            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"}
    ls = subprocess.run(["git", "ls-remote", ssh_git_server.url(bare)], env=env,
                        capture_output=True, text=True, timeout=30)
    assert ls.returncode == 0, ls.stderr
