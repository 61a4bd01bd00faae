"""A read-only rsync daemon for upstream's rsync transport, started and stopped with the server.

Module `mistry` is rooted at build_path, so upstream clients' unchanged
`rsync -rtlp user@host::mistry/<project>/ready/<id>/data/artifacts/ DEST` works. It serves the
artifacts of successful builds and nothing else, in two layers:

- the daemon's filter hides everything but `<project>/ready/<id>/data/artifacts/` (no logs, no
  build_info.json, no cache or params, no `.mistryd/`, `pending/`, `latest` or `groups/`);
- a `pre-xfer exec` check (this file run as a script, standard library only) refuses every
  request that is not inside the artifacts of a build whose build_info.json says it succeeded,
  or whose path leaves them through a symlink.

With tokens configured (and `anonymous_read` off) the daemon asks for a user and password: the
token's name and the token itself. The daemon dies with mistryd (a parent-death signal), and a
daemon left over from an earlier run is found through its pid file and stopped.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("mistryd")

MODULE = "mistry"
PID_FILE = ".mistryd/rsyncd.pid"  # under build_path, so the next start finds a left-over daemon
# Everything but the artifacts of ready builds is invisible. Anchored patterns start at the
# module root; `***` is the folder and all beneath it.
DAEMON_FILTER = ("- /.mistryd/ + /* + /*/ready + /*/ready/* + /*/ready/*/data "
                 "+ /*/ready/*/data/artifacts/*** - *")
# -L and friends would make the daemon send what a symlink in the artifacts points to;
# --files-from would name files outside the checked source folder.
REFUSED_OPTIONS = "copy-links copy-unsafe-links copy-dirlinks files-from"
_GLOB = re.compile(r"[*?\[\]]")  # the daemon expands these in requested paths itself
_USER_NAME = re.compile(r"[^\s:,@#%*?\[\]\\][^\s:,%*?\[\]\\]*")
PR_SET_PDEATHSIG = 1


class RsyncdError(RuntimeError):
    """The daemon cannot start; the message is one line naming the cause and the fix."""


# --- the pre-xfer check (runs in its own process, started by the daemon) ----------------------


def request_problem(build_path: Path, path: str) -> str | None:
    """Why the requested path (module-relative) may not be served, or None when it may."""
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if ".." in parts or _GLOB.search(path):
        return f"'{path}': '..' and wildcards are not allowed"
    if len(parts) < 5 or parts[1] != "ready" or parts[3:5] != ["data", "artifacts"]:
        return f"'{path}': only <project>/ready/<id>/data/artifacts/ of a build is served"
    root = Path(os.path.realpath(build_path))
    build = root / parts[0] / "ready" / parts[2]
    artifacts = build / "data" / "artifacts"
    if os.path.realpath(artifacts) != str(artifacts):
        return f"'{path}': the build's artifacts folder is a symlink; it is not served"
    if os.path.commonpath([_served_path(root, parts, path), str(artifacts)]) != str(artifacts):
        return f"'{path}': leads out of the build's artifacts through a symlink; not served"
    if not build_succeeded(build):
        return f"'{path}': only artifacts of successful builds are served"
    return None


def _served_path(root: Path, parts: list[str], path: str) -> str:
    """Where the daemon reads a request from. Its last name is sent as it is (a link as a link,
    never followed: -L and friends are refused), so upstream's `artifacts/*`, which the daemon
    expands into every entry, may name a link that points anywhere. A request ending in '/' or
    '/.' makes the daemon go through that last name, so then it must resolve inside too."""
    requested = root.joinpath(*parts)
    if path.rsplit("/", 1)[-1] in ("", "."):
        return os.path.realpath(requested)
    return os.path.join(os.path.realpath(requested.parent), requested.name)


def build_succeeded(build: Path) -> bool:
    from .jobs import servable  # the one definition (stdlib only, so the -I -S check can use it)

    try:
        info = json.loads((build / "build_info.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and servable(info)


def request_args(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """The request's options and (already wildcard-expanded) paths: the RSYNC_ARG# values before
    and after the "." separator."""
    args = []
    i = 0
    while f"RSYNC_ARG{i}" in env:
        args.append(env[f"RSYNC_ARG{i}"])
        i += 1
    if "." not in args:
        return args, []
    return args[:args.index(".")], args[args.index(".") + 1:]


def check_request(env: dict[str, str]) -> str | None:
    """The pre-xfer verdict: None to serve, else the line the client sees."""
    options, paths = request_args(env)
    if "--sender" not in options:  # the client sends: an upload
        return "mistryd: this rsync module is read only; uploads are refused"
    if not paths:
        return "nothing requested: ask for <project>/ready/<id>/data/artifacts/"
    build_path = Path(env["RSYNC_MODULE_PATH"])
    for path in paths:
        if problem := request_problem(build_path, path):
            return f"mistryd: {problem}"
    return None


# --- the daemon -------------------------------------------------------------------------------


def daemon_config(build_path: Path, pid_file: Path, secrets: Path | None = None,
                  users: tuple[str, ...] = ()) -> str:
    # A chroot keeps symlinks inside build_path; it needs root. Without root the pre-xfer check
    # and the filter still refuse whatever leaves the artifacts of a build.
    chroot = "yes" if os.geteuid() == 0 else "no"
    check = " ".join(shlex.quote(a) for a in (sys.executable, "-I", "-S", os.path.abspath(__file__)))
    lines = [
        f"pid file = {_conf_value(pid_file)}",
        f"uid = {os.getuid()}",
        f"gid = {os.getgid()}",
        "",
        f"[{MODULE}]",
        f"path = {_conf_value(build_path)}",
        "comment = mistryd build results (read-only)",
        "read only = yes",
        "write only = no",
        "list = yes",
        f"use chroot = {chroot}",
        "munge symlinks = no",  # links inside the artifacts go out as links, as upstream's did
        f"filter = {DAEMON_FILTER}",
        f"refuse options = {REFUSED_OPTIONS}",
        f"pre-xfer exec = {_conf_value(check)}",
        "timeout = 600",
    ]
    if secrets is not None:
        lines += [f"auth users = , {', '.join(f'{u}:ro' for u in users)}",
                  f"secrets file = {_conf_value(secrets)}", "strict modes = yes"]
    return "\n".join(lines) + "\n"


def _conf_value(value: object) -> str:
    text = str(value)
    if "\n" in text or text != text.strip():
        raise RsyncdError(f"the path {text!r} cannot go into an rsyncd.conf; move it")
    return text.replace("%", "%%")  # rsyncd.conf expands %VAR%


def upstream_client_misreads(build_path: Path, projects) -> list[str]:
    """The projects whose rsync path upstream's client gets wrong: it cuts BuildInfo's `Path` at
    the first occurrence of the project's name, which is inside build_path for these."""
    return sorted(name for name in projects if name in str(build_path))


def rsync_users(tokens) -> dict[str, str]:
    """user -> password for the daemon's secrets file: every token (each role may read)."""
    users: dict[str, str] = {}
    for token in tokens:
        if not _USER_NAME.fullmatch(token.name):
            raise RsyncdError(f"token '{token.name}' cannot be an rsync user name (no spaces, "
                              "':', ',', '%', wildcards or leading '@'); rename it")
        if any(ord(c) < 32 or ord(c) == 127 for c in token.token):
            raise RsyncdError(f"the token of '{token.name}' has control characters, which an rsync "
                              "secrets file cannot hold; change it")
        users[token.name] = token.token
    return users


class RsyncDaemon:
    def __init__(self, build_path: Path, host: str, port: int, users: dict[str, str] | None = None):
        """`users`: name -> password when the daemon requires a login; None: anonymous."""
        self.build_path = Path(build_path)
        self.host = host
        self.port = port
        self.users = users
        self.pid_file = self.build_path / PID_FILE
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 10.0) -> None:
        rsync = shutil.which("rsync")
        if rsync is None:
            raise RsyncdError("rsync_addr is set but rsync is not installed (apt-get install rsync)")
        stop_previous_daemon(self.pid_file)
        check_port_free(self.host, self.port)
        self._dir = Path(tempfile.mkdtemp(prefix="mistryd-rsyncd-"))  # mode 0700
        conf = self._dir / "rsyncd.conf"
        conf.write_text(daemon_config(self.build_path, self.pid_file, *self._secrets()))
        # stderr to a file, not a pipe: nobody reads a pipe while it serves, and a full one blocks
        with open(self._dir / "rsyncd.stderr", "wb") as stderr:
            self._proc = subprocess.Popen(
                [rsync, "--daemon", "--no-detach", f"--config={conf}", f"--address={self.host}",
                 f"--port={self.port}", f"--log-file={self._dir / 'rsyncd.log'}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                preexec_fn=_die_with_parent(os.getpid()))
        try:
            self._await_listening(ready_timeout)
        except RsyncdError:
            self.stop()
            raise
        log.info("mistryd: rsync daemon serving module '%s' at rsync://%s:%d/%s/ (%s)", MODULE,
                 self.host, self.port, MODULE,
                 "login: token name and token" if self.users is not None else "anonymous")

    def _secrets(self) -> tuple[Path | None, tuple[str, ...]]:
        if self.users is None:
            return None, ()
        assert self._dir is not None
        secrets = self._dir / "rsyncd.secrets"
        fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{name}:{password}\n" for name, password in self.users.items())
        return secrets, tuple(self.users)

    def _await_listening(self, timeout: float) -> None:
        """Until the daemon itself listens on the port: a connection could reach someone else."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the daemon has no readiness signal but its socket
            if self._proc.poll() is not None:
                raise RsyncdError(f"the rsync daemon on {self.host}:{self.port} did not start: "
                                  f"{self._failure()}")
            if listening_inodes(self.port) & socket_inodes(self._proc.pid):
                return
            time.sleep(0.02)
        raise RsyncdError(f"the rsync daemon on {self.host}:{self.port} did not listen within "
                          f"{timeout:.0f}s; see {self._dir}/rsyncd.log")

    def _failure(self) -> str:
        holder = port_holder(self.port, exclude=self._proc.pid if self._proc else None)
        if holder:
            return f"the port is in use by {holder}; stop it or choose another rsync_addr"
        assert self._dir is not None and self._proc is not None
        said = [(self._dir / name).read_text(errors="replace") for name in ("rsyncd.stderr", "rsyncd.log")
                if (self._dir / name).exists()]
        errors = [line.split("] ", 1)[-1] for text in said for line in text.splitlines()
                  if "error" in line or "failed" in line]
        return " / ".join(errors) or f"exit code {self._proc.returncode}"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None:
            self.pid_file.unlink(missing_ok=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _die_with_parent(parent: int):
    """A preexec_fn: the daemon gets SIGTERM when mistryd dies, even by kill -9. (The signal
    follows the thread that started it: the main thread, which lives as long as mistryd.)"""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded before the fork, not in the child

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(127)
    return preexec


def stop_previous_daemon(pid_file: Path, timeout: float = 5.0) -> None:
    """Stop the rsync daemon an earlier run left behind (its pid file names it), then forget it."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if _is_rsync_daemon(pid):
        log.warning("mistryd: stopping the rsync daemon left by an earlier run (pid %d)", pid)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None
        if pidfd is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                if not select.select([pidfd], [], [], timeout)[0]:  # readable once it exited
                    os.kill(pid, signal.SIGKILL)
                    select.select([pidfd], [], [], timeout)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
    pid_file.unlink(missing_ok=True)


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon binds
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EACCES and port < unprivileged_port_start():
                raise RsyncdError(privileged_port_problem(host, port)) from None
            holder = port_holder(port)
            raise RsyncdError(f"{host}:{port} is not available ({e.strerror}"
                              f"{'; in use by ' + holder if holder else ''}); stop it or choose "
                              "another rsync_addr") from None


def privileged_port_problem(host: str, port: int) -> str:
    first = unprivileged_port_start()
    return (f"{host}:{port} is a privileged port (below {first}) that mistryd may not bind: run "
            "mistryd as root (upstream's client reaches only port 873), or give it "
            "CAP_NET_BIND_SERVICE as an ambient capability (systemd: AmbientCapabilities=), or "
            f"choose a port from {first} up (clients then need --transport-port)")


def unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


# --- who listens where: /proc/net/tcp and the processes' sockets ------------------------------


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on `port` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def port_holder(port: int, exclude: int | None = None) -> str | None:
    """'pid N (name)' of the process listening on `port`, when this process may see it."""
    inodes = listening_inodes(port)
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != exclude and socket_inodes(int(entry)) & inodes:
            return f"pid {entry} ({_process_name(int(entry))})"
    return None


def _is_rsync_daemon(pid: int) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _process_name(pid) == "rsync" and b"--daemon" in args


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def pre_xfer() -> None:
    """The daemon's pre-xfer exec: exit 1 refuses, stdout tells the client."""
    try:
        verdict = check_request(dict(os.environ))
    except Exception as e:  # noqa: BLE001 - whatever went wrong, refuse (fail closed)
        verdict = f"mistryd: the request could not be checked ({type(e).__name__}); refused"
    if verdict:
        print(verdict)
    sys.exit(1 if verdict else 0)


if __name__ == "__main__":  # run as a file (-I: no path of ours): import it as the package's
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mistryd.rsyncd import pre_xfer as check_as_package_module

    check_as_package_module()
