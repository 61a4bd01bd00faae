"""A read-only rsync daemon for upstream's rsync transport, started and stopped with the server.

Module `mistry` is rooted at build_path, so upstream clients' unchanged
`rsync -rtlp user@host::mistry/<project>/ready/<id>/data/artifacts/ DEST` works. Our own state
folder (.mistryd/) and builds in progress (pending/) are excluded.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger("mistryd")

MODULE = "mistry"


def daemon_config(build_path: Path, pid_file: Path) -> str:
    # A chroot keeps symlinks inside build_path; it needs root. Without root, rsync's own path
    # sanitising applies and symlinks are sent as links (clients use -l), never followed.
    chroot = "yes" if os.geteuid() == 0 else "no"
    return "\n".join([
        f"pid file = {pid_file}",
        f"uid = {os.getuid()}",
        f"gid = {os.getgid()}",
        "",
        f"[{MODULE}]",
        f"path = {build_path}",
        "comment = mistryd build results (read-only)",
        "read only = yes",
        "write only = no",
        "list = yes",
        f"use chroot = {chroot}",
        "munge symlinks = no",
        "exclude = /.mistryd/ /*/pending/",
        "timeout = 600",
        "",
    ])


class RsyncDaemon:
    def __init__(self, build_path: Path, host: str, port: int):
        self.build_path = Path(build_path)
        self.host = host
        self.port = port
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 10.0) -> None:
        rsync = shutil.which("rsync")
        if rsync is None:
            raise RuntimeError("rsync_addr is set but rsync is not installed (apt-get install rsync)")
        self._dir = Path(tempfile.mkdtemp(prefix="mistryd-rsyncd-"))
        conf = self._dir / "rsyncd.conf"
        conf.write_text(daemon_config(self.build_path, self._dir / "rsyncd.pid"))
        self._proc = subprocess.Popen(
            [rsync, "--daemon", "--no-detach", f"--config={conf}", f"--address={self.host}",
             f"--port={self.port}", f"--log-file={self._dir / 'rsyncd.log'}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:  # the daemon has no readiness signal but its port
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self.stop()
                raise RuntimeError(f"rsync daemon on {self.host}:{self.port} did not start: "
                                   f"{err.strip() or 'exit code ' + str(self._proc.returncode)}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"rsync daemon on {self.host}:{self.port} did not answer")
        log.info("mistryd: rsync daemon serving module '%s' at rsync://%s:%d/%s/", MODULE,
                 self.host, self.port, MODULE)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc is not None and proc.stderr:
            proc.stderr.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
