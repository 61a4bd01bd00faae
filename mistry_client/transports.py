"""Artifact transports: http (ours: verified, atomic), rsync and scp (as upstream's client)."""

from __future__ import annotations

import collections
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

from .errors import ClientError, ServerError, TransferError, Unreachable, connection_problem
from .staging import Staging, empty_folder, safe_relpath
from .tar_reader import StreamCut, TarReader

if TYPE_CHECKING:
    from .api import Client

TRANSPORTS = ("http", "rsync", "scp")
CHUNK = 1 << 20
RETRIES = 3


class HttpTransport:
    """GET the manifest; leave out what the target already holds as the manifest has it; fetch
    the rest into a staging folder as one tar stream (a few files: one GET each), hashing each
    file as it is written; every size and sha256 must match before anything moves into the
    target. A dropped stream resumes: the file it broke in is finished with a Range request, and
    a new stream starts after it (`.tar?start=N`)."""

    def __init__(self, client: Client, progress: bool = False, keep_special_bits: bool = False):
        self.client = client
        self.progress = progress
        # setuid, setgid and sticky bits come along only when asked for (--keep-special-bits):
        # a build is untrusted, and a setuid file in a target folder is a way to root
        self.mode_mask = 0o7777 if keep_special_bits else 0o777

    def fetch(self, info: dict, target: str | Path, clear_target: bool = False) -> None:
        from .target_state import already_there, record

        project, build_id = info["Project"], info["ID"]
        manifest = self.client.manifest(project, build_id)
        entries = _checked_entries(manifest.get("entries"))
        target = Path(target)
        there, state_current = already_there(target, entries, self.mode_mask)
        needed = [i for i in range(len(entries)) if i not in there]
        files = [i for i in needed if entries[i]["type"] == "file"]
        total = sum(entries[i]["size"] for i in files)
        with Staging(target) as staging, _progress(self.progress, total) as bar:
            root = os.fspath(staging.path)
            dirs = _staged_dirs(entries, needed)
            for path in dirs:
                os.mkdir(f"{root}/{path}")
            download = _Download(self.client, project, build_id, root, bar, self.mode_mask)
            if len(files) >= STREAM_FROM:
                download.stream(entries, files)
            else:
                for i in files:
                    download.one(entries[i])
            for i in needed:  # links last, so no download can write through one
                if entries[i]["type"] == "symlink":
                    os.symlink(entries[i]["target"], f"{root}/{entries[i]['path']}")
            modes = {e["path"]: e.get("mode", 0o755) for e in entries if e["type"] == "dir"}
            for path in reversed(dirs):  # deepest first: a read-only dir is set last
                os.chmod(f"{root}/{path}", modes.get(path, 0o755) & self.mode_mask)
            staging.commit(clear_target, {e["path"] for e in entries} if clear_target else None)
        if files or not state_current:
            record(target, (entries[i] for i in range(len(entries))
                            if entries[i]["type"] == "file"))


STREAM_FROM = 8  # fewer files than this: one GET each (a stream costs a pool slot on the server)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _staged_dirs(entries: list[dict], needed: list[int]) -> list[str]:
    """The directories to make in the staging folder, parents first: the needed ones, and every
    folder a needed entry lies in."""
    dirs: set[str] = set()
    for i in needed:
        path = entries[i]["path"]
        if entries[i]["type"] == "dir":
            dirs.add(path)
        while "/" in path:
            path = path.rpartition("/")[0]
            if path in dirs:
                break
            dirs.add(path)
    return sorted(dirs, key=lambda p: (p.count("/"), p))


class _FileSink:
    """One file being written into the staging folder, hashed as it is written."""

    def __init__(self, path: str, entry: dict, mode: int, umask: int):
        self.entry = entry
        # created with its mode (in a private staging folder): a chmod only when umask took bits
        self.mode = mode if mode & umask else None
        self.fd = os.open(path, _CREATE, mode)
        self.digest = hashlib.sha256()
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        self.digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.written += len(data)

    def restart(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.digest, self.written = hashlib.sha256(), 0

    def finish(self) -> None:
        """Checks the file against the manifest (TransferError), sets its mode and closes it."""
        try:
            entry = self.entry
            if self.written != entry["size"]:
                raise TransferError(f"artifact {entry['path']}: got {self.written} bytes, the "
                                    f"manifest says {entry['size']}; the target was left untouched")
            if self.digest.hexdigest() != entry["sha256"]:
                raise TransferError(f"artifact {entry['path']}: sha256 {self.digest.hexdigest()} "
                                    f"does not match the manifest's {entry['sha256']}; the target "
                                    "was left untouched")
            if self.mode is not None:
                os.fchmod(self.fd, self.mode)
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Download:
    def __init__(self, client: Client, project: str, build_id: str, root: str, bar,
                 mode_mask: int):
        self.client = client
        self.project = project
        self.build_id = build_id
        self.root = root
        self.bar = bar
        self.mode_mask = mode_mask
        self.partial: _FileSink | None = None  # the file a stream broke in
        self.umask = os.umask(0)
        os.umask(self.umask)

    def _sink(self, entry: dict) -> _FileSink:
        return _FileSink(f"{self.root}/{entry['path']}", entry,
                         entry.get("mode", 0o644) & self.mode_mask, self.umask)

    def stream(self, entries: list[dict], files: list[int]) -> None:
        """The `files` (manifest indexes, ascending) from tar streams, resumed after each cut."""
        pending = collections.deque(files)
        while pending:
            try:
                self._stream_once(entries, pending)
            except (requests.RequestException, StreamCut, Unreachable) as e:
                # the file the stream broke in (or before) is finished on its own, with Range
                sink, self.partial = self.partial, None
                self.one(entries[pending.popleft()], sink, failed=e)
            except ServerError as e:
                if e.status != 503:
                    raise TransferError(f"the artifact stream of {self.project}/{self.build_id} "
                                        f"was refused: {e.message}") from None
                for i in pending:  # the server has no stream to spare: one GET each
                    self.one(entries[i])
                return

    def _stream_once(self, entries: list[dict], pending: collections.deque) -> None:
        i = pending[0]
        url = f"artifacts/{self.project}/{self.build_id}.tar?start={i}"
        with self.client.request("GET", url, stream=True) as r:
            reader = TarReader(r.iter_content(CHUNK))
            while pending:
                member = reader.next_member()
                entry = entries[i] if i < len(entries) else None
                if member is None or entry is None or member.path != entry["path"] \
                        or member.type != entry["type"]:
                    expected = entry["path"] if entry else "its end"
                    found = member.path if member else "its end"
                    raise TransferError(f"the artifact stream has {found!r} where the manifest "
                                        f"has {expected!r}; the target was left untouched")
                if member.type == "file":
                    if member.size != entry["size"]:
                        raise TransferError(f"artifact {entry['path']}: the stream has "
                                            f"{member.size} bytes, the manifest says "
                                            f"{entry['size']}; the target was left untouched")
                    if i == pending[0]:
                        self.partial = sink = self._sink(entry)
                        for piece in reader.body(member.size):
                            sink.write(piece)
                            self.bar.update(len(piece))
                        self.partial = None
                        sink.finish()
                        pending.popleft()
                    else:  # already in the target: read past it
                        for _ in reader.body(member.size):
                            pass
                elif member.type == "symlink" and member.target != entry["target"]:
                    raise TransferError(f"artifact {entry['path']}: the stream's link target "
                                        "differs from the manifest's; the target was left untouched")
                i += 1

    def one(self, entry: dict, sink: _FileSink | None = None,
            failed: BaseException | None = None) -> None:
        """One file by itself, resuming with Range after a dropped connection; `sink` is what a
        stream had written of it before it broke (`failed`)."""
        url = f"artifacts/{self.project}/{self.build_id}/{quote(entry['path'])}"
        sink = sink or self._sink(entry)
        attempts = 0 if failed is None else 1
        try:
            while True:
                headers = {"Range": f"bytes={sink.written}-"} if sink.written else {}
                try:
                    with self.client.request("GET", url, stream=True, headers=headers) as r:
                        if sink.written and r.status_code != 206:  # no resume: start over
                            self.bar.update(-sink.written)
                            sink.restart()
                        for chunk in r.iter_content(CHUNK):
                            sink.write(chunk)
                            self.bar.update(len(chunk))
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
        except BaseException:
            sink.close()
            raise
        sink.finish()


def _checked_entries(entries: object) -> list[dict]:
    if not isinstance(entries, list):
        raise TransferError("the server's artifact manifest has no entry list")
    links: set[str] = set()
    seen: set[str] = set()
    checked = []
    for e in entries:
        if not isinstance(e, dict) or e.get("type") not in ("dir", "file", "symlink"):
            raise TransferError(f"the server's artifact manifest has a bad entry {e!r}")
        path = safe_relpath(e.get("path"))
        if path in seen:
            raise TransferError(f"the server's artifact manifest lists {path!r} twice")
        seen.add(path)
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
