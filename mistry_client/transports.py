"""Artifact transports: http (ours: verified, atomic), rsync and scp (as upstream's client)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import parallel
from .download import Download
from .errors import TransferError
from .staging import Staging, empty_folder, safe_relpath
from .ui import Fetched

if TYPE_CHECKING:
    from .api import Client

TRANSPORTS = ("http", "rsync", "scp")
BarFactory = Callable[[int], contextlib.AbstractContextManager[Any]]


class HttpTransport:
    """GET the manifest; leave out what the target already holds as the manifest has it; fetch
    the rest into a staging folder as tar streams (a few files: one GET each; many: several
    streams in parallel processes), hashing each file as it is written; every size and hash
    must match before anything moves into the target. A dropped stream resumes: the file it
    broke in is finished with a Range request, and a new stream starts after it."""

    def __init__(self, client: Client, progress: bool | BarFactory = False,
                 keep_special_bits: bool = False):
        self.client = client
        self.progress = progress  # True: click's bar; or what makes a bar for N bytes (ui.py)
        # setuid, setgid and sticky bits come along only when asked for (--keep-special-bits):
        # a build is untrusted, and a setuid file in a target folder is a way to root
        self.mode_mask = 0o7777 if keep_special_bits else 0o777

    def fetch(self, info: dict, target: str | Path, clear_target: bool = False) -> Fetched:
        from . import target_state

        project, build_id = info["Project"], info["ID"]
        target = Path(target)
        state = target_state.load(target)
        manifest, tag = None, None
        if state is not None and state.manifest and state.mode_mask == self.mode_mask \
                and not clear_target:  # (clearing would have to look for what is extra)
            manifest, tag = self.client.manifest(project, build_id, unless=state.manifest)
            if manifest is None and state.unchanged(target):  # the same manifest, all in place
                target_state.used(target)
                return Fetched(files=0, bytes=0, already=len(state.files))
        if manifest is None:
            manifest, tag = self.client.manifest(project, build_id)
            assert manifest is not None
        entries = _checked_entries(manifest.get("entries"))
        there, state_current = target_state.already_there(target, entries, self.mode_mask, state)
        needed = [i for i in range(len(entries)) if i not in there]
        files = [i for i in needed if entries[i]["type"] == "file"]
        total = sum(entries[i]["size"] for i in files)
        with Staging(target) as staging, _progress(self.progress, total) as bar:
            root = os.fspath(staging.path)
            dirs = _staged_dirs(entries, needed)
            for path in dirs:
                os.mkdir(f"{root}/{path}")
            download = Download(self.client, project, build_id, root, bar, self.mode_mask)
            if len(files) >= STREAM_FROM:
                download.written.update(self._stream(download, entries, files))
            else:
                for i in files:
                    download.one(entries[i])
            for i in needed:  # links last, so no download can write through one
                if entries[i]["type"] == "symlink":
                    os.symlink(entries[i]["target"], f"{root}/{entries[i]['path']}")
            modes = {e["path"]: e.get("mode", 0o755) for e in entries if e["type"] == "dir"}
            for path in reversed(dirs):  # deepest first: a read-only dir is set last
                os.chmod(f"{root}/{path}", modes.get(path, 0o755) & self.mode_mask)
            moved = staging.commit(clear_target,
                                   {e["path"] for e in entries} if clear_target else None)
        if files or not state_current or state is None or state.manifest != tag:
            target_state.record(target, entries, download.written, moved, tag, self.mode_mask)
        held = sum(1 for i in there if entries[i]["type"] == "file")
        return Fetched(files=len(files), bytes=total, already=held)


    def _stream(self, download: Download, entries: list[dict],
                files: list[int]) -> dict[str, list[int]]:
        """As one tar stream, or (many files, on Linux) as several in forked processes; the
        signatures of the files written."""
        workers = parallel.workers_for(len(files))
        if workers == 1:
            download.stream(entries, files)
            return {}

        def fetch_run(run: list[int], report: Callable[[int], None]) -> dict[str, list[int]]:
            self.client.reconnect()  # in the child: a connection of its own
            part = Download(self.client, download.project, download.build_id, download.root,
                            _Reporting(report), self.mode_mask)
            part.stream(entries, run)
            return part.written

        runs = parallel.split(files, [entries[i]["size"] for i in files], workers)
        written: dict[str, list[int]] = {}
        for part in parallel.run_parallel(runs, fetch_run, download.bar.update):
            written.update(part)
        return written


STREAM_FROM = 8  # fewer files than this: one GET each (a stream costs a pool slot on the server)


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


def _checked_entries(entries: object) -> list[dict]:
    if not isinstance(entries, list):
        raise TransferError("the server's artifact manifest has no entry list")
    links: set[str] = set()
    for e in entries:
        kind = e.get("type") if isinstance(e, dict) else None
        if kind not in _KINDS or (kind == "file" and not _file_entry_ok(e)) \
                or not isinstance(e.get("path"), str):
            raise TransferError(f"the server's artifact manifest has a bad entry {e!r}")
        if kind == "symlink":
            links.add(e["path"])
    paths = [e["path"] for e in entries]
    _check_paths(paths)
    if len(set(paths)) != len(paths):
        seen: set[str] = set()
        twice = next(p for p in paths if p in seen or seen.add(p))  # type: ignore[func-returns-value]
        raise TransferError(f"the server's artifact manifest lists {twice!r} twice")
    if links:  # nothing may be written beneath a link: it could point anywhere
        for path in paths:
            parent = path.rpartition("/")[0]
            while parent:
                if parent in links:
                    raise TransferError(f"the server's artifact manifest puts {path!r} "
                                        "beneath a symlink")
                parent = parent.rpartition("/")[0]
    return entries


# what a path that is not relative and plain (see safe_relpath) has, between newlines
_UNSAFE = ("\n\n", "\n/", "/\n", "//", "/./", "/.\n", "\n./", "\n.\n", "/../", "/..\n",
           "\n../", "\n..\n", "\0")


def _check_paths(paths: list[str]) -> None:
    """Every path relative and plain (see safe_relpath), checked with a few scans over all the
    paths at once; the one to name is looked for only when something is wrong."""
    joined = "\n" + "\n".join(paths) + "\n"
    if joined.count("\n") != len(paths) + 1 or any(bad in joined for bad in _UNSAFE):
        for path in paths:
            safe_relpath(path)


_KINDS = frozenset(("dir", "file", "symlink"))


def _file_entry_ok(e: dict) -> bool:
    size, sha256, fast = e.get("size"), e.get("sha256"), e.get("blake3", "")
    return type(size) is int and size >= 0 and isinstance(sha256, str) and isinstance(fast, str)


@contextlib.contextmanager
def _progress(enabled: bool | BarFactory, total: int):
    if not enabled or total == 0:
        yield _NoBar()
        return
    if callable(enabled):
        with enabled(total) as bar:
            yield bar
        return
    import click

    with click.progressbar(length=total, label="Fetching artifacts", file=sys.stderr,
                           show_pos=False, show_percent=True) as bar:
        yield bar


class _NoBar:
    def update(self, n: int) -> None:
        pass


class _Reporting:
    def __init__(self, report: Callable[[int], None]):
        self.update = report


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
        """Straight into the target: what was fetched is not known here (None)."""
        target = Path(target)
        program = self.command(info, target)[0]
        import shutil
        import subprocess  # here: the http transport, the usual one, needs neither

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
