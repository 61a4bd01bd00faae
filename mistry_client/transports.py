"""Artifact transports: http (ours: verified, atomic), rsync and scp (as upstream's client)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import requests

from .errors import ClientError, TransferError, Unreachable, connection_problem
from .staging import Staging, empty_folder, safe_relpath

if TYPE_CHECKING:
    from .api import Client

TRANSPORTS = ("http", "rsync", "scp")
CHUNK = 1 << 20
RETRIES = 3


class HttpTransport:
    """GET the manifest, then each file (resuming with Range after a dropped connection) into a
    staging folder; every size and sha256 must match before anything moves into the target."""

    def __init__(self, client: Client, progress: bool = False, keep_special_bits: bool = False):
        self.client = client
        self.progress = progress
        # setuid, setgid and sticky bits come along only when asked for (--keep-special-bits):
        # a build is untrusted, and a setuid file in a target folder is a way to root
        self.mode_mask = 0o7777 if keep_special_bits else 0o777

    def fetch(self, info: dict, target: str | Path, clear_target: bool = False) -> None:
        project, build_id = info["Project"], info["ID"]
        manifest = self.client.manifest(project, build_id)
        entries = _checked_entries(manifest.get("entries"))
        total = sum(e.get("size", 0) for e in entries if e["type"] == "file")
        target = Path(target)
        with Staging(target) as staging, _progress(self.progress, total) as bar:
            for entry in entries:
                dest = staging.path / entry["path"]
                if entry["type"] == "dir":
                    dest.mkdir(parents=True, exist_ok=True)
                elif entry["type"] == "file":
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self._download(project, build_id, entry, dest, bar)
            for entry in entries:  # links last, so no download can write through one
                dest = staging.path / entry["path"]
                if entry["type"] == "symlink":
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(entry["target"], dest)
                elif entry["type"] == "file":
                    os.chmod(dest, entry.get("mode", 0o644) & self.mode_mask)
            for entry in reversed(entries):  # deepest first: a read-only dir is set last
                if entry["type"] == "dir":
                    os.chmod(staging.path / entry["path"], entry.get("mode", 0o755) & self.mode_mask)
            staging.commit(clear_target)

    def _download(self, project: str, build_id: str, entry: dict, dest: Path, bar) -> None:
        url = f"artifacts/{project}/{build_id}/{quote(entry['path'])}"
        written = 0
        digest = hashlib.sha256()
        attempts = 0
        with open(dest, "wb") as f:
            while True:
                headers = {"Range": f"bytes={written}-"} if written else {}
                try:
                    with self.client.request("GET", url, stream=True, headers=headers) as r:
                        if written and r.status_code != 206:  # no resume: start over
                            f.seek(0)
                            f.truncate()
                            written, digest = 0, hashlib.sha256()
                        for chunk in r.iter_content(CHUNK):
                            f.write(chunk)
                            digest.update(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                    break
                except (requests.RequestException, ClientError) as e:
                    attempts += 1
                    # a broken connection or a server out of reach for a moment: ask again
                    transient = not isinstance(e, ClientError) or isinstance(e, Unreachable)
                    if attempts > RETRIES or not transient:
                        problem = e.message if isinstance(e, ClientError) \
                            else connection_problem(e)
                        tries = f" after {attempts} attempts" if attempts > 1 else ""
                        raise TransferError(f"download of {entry['path']} failed{tries}: "
                                            f"{problem}; the target was left untouched") from None
        if written != entry["size"]:
            raise TransferError(f"artifact {entry['path']}: got {written} bytes, the manifest "
                                f"says {entry['size']}; the target was left untouched")
        if digest.hexdigest() != entry["sha256"]:
            raise TransferError(f"artifact {entry['path']}: sha256 {digest.hexdigest()} does not "
                                f"match the manifest's {entry['sha256']}; the target was left "
                                "untouched")


def _checked_entries(entries: object) -> list[dict]:
    if not isinstance(entries, list):
        raise TransferError("the server's artifact manifest has no entry list")
    links: set[str] = set()
    checked = []
    for e in entries:
        if not isinstance(e, dict) or e.get("type") not in ("dir", "file", "symlink"):
            raise TransferError(f"the server's artifact manifest has a bad entry {e!r}")
        path = safe_relpath(e.get("path"))
        if e["type"] == "symlink":
            links.add(path)
        checked.append(e)
    for e in checked:  # nothing may be written beneath a link: it could point anywhere
        parts = e["path"].split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise TransferError(f"the server's artifact manifest puts {e['path']!r} "
                                    "beneath a symlink")
    return checked


@contextlib.contextmanager
def _progress(enabled: bool, total: int):
    if not enabled or total == 0:
        yield _NoBar()
        return
    import click

    with click.progressbar(length=total, label="Fetching artifacts", file=sys.stderr,
                           show_pos=False, show_percent=True) as bar:
        yield bar


class _NoBar:
    def update(self, n: int) -> None:
        pass


class CommandTransport:
    """rsync or scp as a subprocess, straight into the target, as upstream's client does."""

    name = ""

    def __init__(self, host: str, user: str | None = None, port: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.host = host
        self.user = user
        self.port = port
        self.extra_args = tuple(extra_args)

    def remote(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def command(self, info: dict, target: Path) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The command's environment; None: this process's."""
        return None

    def fetch(self, info: dict, target: str | Path, clear_target: bool = False) -> None:
        target = Path(target)
        program = self.command(info, target)[0]
        if shutil.which(program) is None:
            raise TransferError(f"the {self.name} transport needs `{program}` installed")
        target.mkdir(parents=True, exist_ok=True)
        if clear_target:
            empty_folder(target)
        out = subprocess.run(self.command(info, target), check=False, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, env=self.environment())
        if out.returncode != 0:
            raise TransferError(f"{self.name} failed (exit code {out.returncode}): "
                                f"{out.stderr.strip()}")


class RsyncTransport(CommandTransport):
    """A server with tokens asks its rsync daemon's users for a login: --transport-user is the
    token's name, and the token (--token, MISTRY_TOKEN) goes to rsync as RSYNC_PASSWORD."""

    name = "rsync"

    def __init__(self, host: str, user: str | None = None, port: int | None = None,
                 extra_args: tuple[str, ...] = (), token: str | None = None,
                 keep_special_bits: bool = False):
        super().__init__(host, user, port, extra_args)
        self.token = token
        self.keep_special_bits = keep_special_bits

    def environment(self) -> dict[str, str] | None:
        if not self.token:
            return None  # an RSYNC_PASSWORD of the caller's own still applies
        return {**os.environ, "RSYNC_PASSWORD": self.token}

    def command(self, info: dict, target: Path) -> list[str]:
        src = f"{self.remote()}::mistry/{info['Project']}/ready/{info['ID']}/data/artifacts/"
        port = [f"--port={self.port}"] if self.port else []
        # -p as upstream, but no setuid/setgid bits unless asked (--keep-special-bits)
        chmod = [] if self.keep_special_bits else ["--chmod=ug-s"]
        return ["rsync", "-rtlp", *chmod, *port, *self.extra_args, src, f"{target}/"]


class ScpTransport(CommandTransport):
    name = "scp"

    def command(self, info: dict, target: Path) -> list[str]:
        port = ["-P", str(self.port)] if self.port else []
        return ["scp", "-r", "-q", "-o", "BatchMode=yes", *port, *self.extra_args,
                f"{self.remote()}:{info['Path']}/.", str(target)]
