"""The git work of a push build, done by the server on the host: `git ls-remote` to resolve a
branch head, and a checkout of the exact commit, clean, in the group's /data/cache.

The checkout comes from the group's last build, whose container could write everything in it,
`.git` included, and git runs here as the server's user: so `.git` is treated as hostile. Git
reads no system or user config, runs no hooks and no fsmonitor, speaks only git, ssh and http(s),
and before each use the checkout must be a real folder and `.git` a plain folder with no link or
special file in it (else it is thrown away and cloned again), its config is written afresh and
hooks, alternates, attributes and the index are removed."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import MistryError
from ..logs import MISTRYD, STDERR, STDOUT, LogSink

CHECKOUT = "checkout"  # the folder in /data/cache the command runs in
FRESH_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
_HARDENING = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
              "-c", "protocol.allow=never", "-c", "protocol.git.allow=always",
              "-c", "protocol.ssh.allow=always", "-c", "protocol.http.allow=always",
              "-c", "protocol.https.allow=always", "-c", "advice.detachedHead=false"]
_POLL = 0.1


class GitFailed(MistryError):
    """A git step failed: the message names the step and git's last line."""

    status = 502


class StepStopped(Exception):
    """A git step was stopped: cancelled (timed_out False) or past its deadline."""

    def __init__(self, reason: str, timed_out: bool):
        super().__init__(reason)
        self.reason, self.timed_out = reason, timed_out


def stamp(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def note(log: LogSink, text: str) -> None:
    """One step line, time-stamped (the page shows every line's time; the plain log needs it)."""
    log.line(f"[{stamp()}] mistryd: {text}", MISTRYD)


@dataclass
class GitEnv:
    """How git runs: no config but ours, no prompt, ssh through the given command."""

    home: Path  # an empty folder of the job's own
    ssh_command: str
    agent_socket: str | None = None

    def environ(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
               "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "git:ssh:http:https",
               "GIT_SSH_COMMAND": self.ssh_command, "LC_ALL": "C"}
        if self.agent_socket:
            env["SSH_AUTH_SOCK"] = self.agent_socket
        for name in ("GIT_SSL_CAINFO", "SSL_CERT_FILE", "https_proxy", "HTTPS_PROXY",
                     "http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env


def ssh_command(known_hosts: Path, key: Path | None = None) -> str:
    """ssh for git: never asks, trusts a host on first use (known_hosts in the server's state
    folder; fill it in advance to pin hosts), and with `key` uses that key only."""
    parts = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
             "-o", f"UserKnownHostsFile={known_hosts}"]
    if key is not None:
        parts += ["-o", "IdentitiesOnly=yes", "-i", str(key)]
    return " ".join(_quote(p) for p in parts)


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[A-Za-z0-9_./=:@-]+", word) else "'" + word.replace("'", "'\\''") + "'"


def ls_remote(url: str, branch: str, env: GitEnv, timeout: float = 60) -> str | None:
    """The commit `branch` points at in `url`, None when it has no such branch. GitFailed when
    the repository does not answer."""
    try:
        out = subprocess.run(["git", *_HARDENING, "ls-remote", "--heads", "--", url,
                              f"refs/heads/{branch}"], env=env.environ(), capture_output=True,
                             text=True, timeout=timeout, cwd=env.home)
    except subprocess.TimeoutExpired:
        raise GitFailed(f"git ls-remote {url} did not answer within {timeout:g}s") from None
    if out.returncode != 0:
        raise GitFailed(f"git ls-remote {url} failed: {_last_line(out.stderr)}")
    for line in out.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        if ref == f"refs/heads/{branch}":
            return sha
    return None


@dataclass
class Checkout:
    """One build's git work in `work` (/data/cache/checkout on the host)."""

    work: Path
    env: GitEnv
    log: LogSink
    cancel: threading.Event
    deadline: float | None = None
    dry_run: bool = False
    owner: tuple[int, int] | None = None  # (uid, gid) the checkout is handed to afterwards

    def run(self, url: str, branch: str, commit: str) -> str:
        """Fetch `branch` from `url` and check out `commit` clean; returns the full commit."""
        existing = self._usable_git_dir()
        if existing:
            note(self.log, f"fetching {url} {branch} into the existing checkout")
        else:
            note(self.log, f"cloning {url} {branch} (no checkout yet)")
            if not self.dry_run:
                self._fresh_folder()
            self._git("init", "-q")
        self._git("fetch", "--no-tags", "--force", "--", url,
                  f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
        target = commit or f"refs/remotes/origin/{branch}"
        note(self.log, f"checking out {commit or branch}")
        self._git("checkout", "-q", "--force", "--detach", target)
        self._git("clean", "-ffdxq")
        full = self._git("rev-parse", "HEAD", quiet=True).strip() if not self.dry_run else commit
        if not self.dry_run and commit and not full.startswith(commit):
            raise GitFailed(f"checked out {full} instead of {commit}")
        if self.owner is not None and not self.dry_run:
            _hand_tree(self.work, *self.owner)
        return full

    def _usable_git_dir(self) -> bool:
        """Whether the checkout's .git can be used: in a checkout that is a real folder (a link
        would lead git anywhere on the host), a plain folder with nothing but folders and
        regular files in it. Made safe to use: our config; no hooks, alternates, attributes, or
        index (a forged one could name paths outside the checkout: git makes a new one)."""
        try:
            if not stat.S_ISDIR(os.lstat(self.work).st_mode):
                note(self.log, "the checkout is not a plain folder; cloning again")
                return False
        except FileNotFoundError:
            return False
        git = self.work / ".git"
        try:
            st = os.lstat(git)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode) or not _plain_tree(git):
            note(self.log, "the checkout's .git is not a plain folder; cloning again")
            return False
        if self.dry_run:
            return True
        (git / "config").unlink(missing_ok=True)
        (git / "config").write_text(FRESH_CONFIG)
        for leftover in ("hooks", "info/attributes", "objects/info/alternates", "commondir",
                         "objects/info/http-alternates", "info/grafts", "shallow", "index",
                         "modules", "worktrees"):
            path = git / leftover
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return True

    def _fresh_folder(self) -> None:
        if os.path.lexists(self.work):
            if os.path.isdir(self.work) and not os.path.islink(self.work):
                shutil.rmtree(self.work)
            else:
                os.unlink(self.work)
        self.work.mkdir(parents=True)

    def _git(self, *args: str, quiet: bool = False) -> str:
        shown = "git " + " ".join(args)
        if self.dry_run:
            note(self.log, f"would run: {shown}")
            return ""
        if not quiet:
            note(self.log, shown)
        argv = ["git", *_HARDENING, "-c", f"safe.directory={self.work}", *args]
        return _run(argv, self.work, self.env.environ(), self.log, self.cancel, self.deadline,
                    shown, show_output=not quiet)


def _run(argv: list[str], cwd: Path, env: dict[str, str], log: LogSink, cancel: threading.Event,
         deadline: float | None, shown: str, show_output: bool) -> str:
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=_pump, args=(proc.stdout, out, log, STDOUT, show_output),
                                daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, err, log, STDERR, show_output),
                                daemon=True)]
    for r in readers:
        r.start()
    stopped: StepStopped | None = None
    while proc.poll() is None:
        time.sleep(_POLL)
        if cancel.is_set():
            stopped = StepStopped(f"cancelled during {shown}", timed_out=False)
        elif deadline is not None and time.monotonic() >= deadline:
            stopped = StepStopped(f"timed out during {shown}", timed_out=True)
        if stopped is not None:
            proc.kill()
            proc.wait()
            break
    for r in readers:
        r.join(5)
    if stopped is not None:
        raise stopped
    if proc.returncode != 0:
        raise GitFailed(f"{shown} failed (exit code {proc.returncode}): "
                        f"{_last_line(b''.join(err).decode('utf-8', 'replace'))}")
    return b"".join(out).decode("utf-8", "replace")


def _pump(stream, into: list[bytes], log: LogSink, which: str, show: bool) -> None:
    for line in iter(stream.readline, b""):
        into.append(line)
        if show:
            log.write(line, which)
    stream.close()


def _plain_tree(root: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                return False
    return True


def _hand_tree(root: Path, uid: int, gid: int) -> None:
    """What git wrote as the server's user goes to the build's user (the command writes there)."""
    if os.geteuid() != 0:
        return
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


