"""A push build's own ssh-agent (Mixmaster's per-job agent): started for the build, holding the
deploy key (`ssh_key`), used by the host's git fetch and handed to the build's container as one
socket (and SSH_AUTH_SOCK), and ended with the build.

Who may use it: ssh-agent accepts a client of its own uid or root only, and its socket is mode
0600 in a 0700 folder of its own. So the agent runs as the uid the build's command runs as (the
container reaches it; the server's git, as root, does too) and nobody else gets in. The key's
bytes go from its file to the agent through `ssh-add` on the host; the container gets only the
socket, never the file, and neither the file nor its bytes are written to the log or the build
folder.

Should `stop` never be reached (the server killed), the agent still ends: it is started as
`ssh-agent -a SOCKET sh -c '... exec cat'`, so it watches its command (ssh-agent checks every 10
seconds that its parent lives), and that `cat` reads a pipe from the server and ends when the
server does. (`setpriv --pdeathsig` cannot do this: ssh-agent is set-group-ID on Debian, and the
kernel clears the parent-death signal when such a program starts.) Its key expires after
`lifetime` seconds whatever happens.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import MistryError

SOCKET_NAME = "agent.sock"
# where the container finds the socket (SSH_AUTH_SOCK); a file bind mount, not the folder
CONTAINER_SOCKET = "/run/mistryd/ssh-agent.sock"
_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
        "SSH_ASKPASS_REQUIRE": "never"}  # a key with a passphrase fails, never prompts


class AgentFailed(MistryError):
    """The build's ssh-agent did not start or did not take the key: the message says why."""

    status = 500


# ssh-agent's command: tells the agent's pid, then lives as long as the server's end of its stdin
_WATCHED = ["sh", "-c", 'echo "$SSH_AGENT_PID"; exec cat >/dev/null']


@dataclass
class SshAgent:
    folder: Path  # private: the socket and the agent's own messages
    process: subprocess.Popen  # the command the agent watches (`cat`)
    pid: int = 0  # the agent's
    fingerprint: str = ""  # of the key it holds ("SHA256:..."), for the log
    stopped: bool = False

    @property
    def socket(self) -> Path:
        return self.folder / SOCKET_NAME

    @classmethod
    def start(cls, key: Path, owner: tuple[int, int] | None = None, lifetime: int | None = None,
              timeout: float = 10) -> SshAgent:
        """An agent holding `key`, running as `owner` (uid, gid; None: the server's own user).
        AgentFailed, with nothing left running, when it cannot be done."""
        folder = Path(tempfile.mkdtemp(prefix="mistryd-agent-"))
        if owner is not None:
            os.chown(folder, *owner)
        argv = []
        if owner is not None:
            argv += ["setpriv", f"--reuid={owner[0]}", f"--regid={owner[1]}", "--clear-groups",
                     "--"]
        argv += ["ssh-agent", "-a", str(folder / SOCKET_NAME)]
        if lifetime:
            argv += ["-t", str(lifetime)]
        with open(folder / "agent.err", "wb") as errors:
            try:
                process = subprocess.Popen([*argv, *_WATCHED], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=errors, env=_ENV,
                                           cwd=folder, start_new_session=True)
            except OSError as e:
                shutil.rmtree(folder, ignore_errors=True)
                raise AgentFailed(f"could not start ssh-agent ({e.strerror}): install "
                                  "openssh-client") from None
        agent = cls(folder, process)
        try:
            agent._wait_for_pid(timeout)
            agent._add(key)
        except BaseException:
            agent.stop()
            raise
        return agent

    def environ(self) -> dict[str, str]:
        return {**_ENV, "SSH_AUTH_SOCK": str(self.socket), "HOME": str(self.folder)}

    def _wait_for_pid(self, timeout: float) -> None:
        """The agent listens before it starts its command, so once the command has told the
        agent's pid the socket is there."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().strip() if ready else b""
        if not line.isdigit():
            raise AgentFailed(f"ssh-agent did not start: {self._errors()}" if ready else
                              f"ssh-agent did not start within {timeout:g}s")
        self.pid = int(line)
        if not self.socket.exists():
            raise AgentFailed(f"ssh-agent made no socket: {self._errors()}")

    def _add(self, key: Path) -> None:
        # ssh-add reads the key as the server's user and sends it to the agent over the socket;
        # a new session has no terminal, so a passphrase is never asked for
        try:
            added = subprocess.run(["ssh-add", "-q", str(key)], env=self.environ(),
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=30, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise AgentFailed("ssh-add did not add ssh_key to the build's ssh-agent within 30s"
                              ) from None
        if added.returncode != 0:
            said = _last_line(added.stderr).replace(str(key), "ssh_key")
            raise AgentFailed(f"ssh-add could not add ssh_key to the build's ssh-agent: {said} "
                              "(the key must be readable by the server and have no passphrase)")
        listed = subprocess.run(["ssh-add", "-l"], env=self.environ(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=30)
        words = listed.stdout.split()
        self.fingerprint = words[1] if len(words) > 1 else ""

    def stop(self) -> None:
        """End the agent (it forgets the key) and remove its folder; safe to call twice."""
        if self.pid and not self.stopped:
            _end(self.pid)
        self.stopped = True
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _errors(self) -> str:
        try:
            return _last_line((self.folder / "agent.err").read_text(errors="replace"))
        except OSError:
            return "no output"


def _end(pid: int, grace: float = 5) -> None:
    """SIGTERM (the agent removes its socket), SIGKILL after `grace`; returns once it is gone
    (it is not our child: its parent reaps it, so an ended agent is a zombie, or no process)."""
    sig = signal.SIGTERM
    deadline = time.monotonic() + grace
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    return
            os.kill(pid, sig)
        except (FileNotFoundError, ProcessLookupError):
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        time.sleep(0.01)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
