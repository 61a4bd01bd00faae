"""Artifact transports: http (ours: verified, atomic), rsync and scp (as upstream's client)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import parallel
from .download import Download
from .errors import TransferError
from .manifest import Manifest
from .staging import Staging, empty_folder
from .target_state import SIGNATURE
from .ui import Fetched

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .api import Client

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
        state = None if target_state.empty(target) else target_state.load(target)
        document, tag = None, None
        if state is not None and state.manifest and state.mode_mask == self.mode_mask \
                and not clear_target:  # (clearing would have to look for what is extra)
            document, tag = self.client.manifest(project, build_id, unless=state.manifest,
                                                 form="columns")
            if document is None and state.unchanged(target):  # the same manifest, all in place
                target_state.used(target)
                return Fetched(files=0, bytes=0, already=len(state.files))
        if document is None:
            document, tag = self.client.manifest(project, build_id, form="columns")
        manifest = Manifest.of(document)
        there, state_current = target_state.already_there(target, manifest, self.mode_mask, state)
        needed = [i for i in range(len(manifest)) if i not in there]
        files = [i for i in needed if manifest.kinds[i] == "file"]
        total = sum(manifest.sizes[i] for i in files)
        with Staging(target) as staging, _progress(self.progress, total) as bar:
            root = os.fspath(staging.path)
            download = Download(self.client, project, build_id, root, manifest, bar,
                                self.mode_mask)
            self._place(download, needed, len(files))
            _set_dir_modes(root, manifest, needed if there else None,
                           self.mode_mask, 0o777 & ~download.umask)
            moved = staging.commit(clear_target, set(manifest.paths) if clear_target else None)
        if files or not state_current or state is None or state.manifest != tag:
            target_state.record(target, manifest, download.written, moved, tag, self.mode_mask)
        held = sum(1 for i in there if manifest.kinds[i] == "file")
        return Fetched(files=len(files), bytes=total, already=held)

    def _place(self, download: Download, needed: list[int], files: int) -> None:
        """The `needed` entries into the staging folder: by this process, or (many files, on
        Linux) in runs by forked processes; the signatures of the files written are left in
        `download.written`."""
        workers = parallel.workers_for(files)
        if workers == 1:
            download.place(needed)
            return

        def place_run(run: list[int], report: Callable[[int], None]) -> list[int]:
            self.client.reconnect()  # in the child: a connection of its own
            part = Download(self.client, download.project, download.build_id, download.root,
                            download.manifest, _Reporting(report), self.mode_mask)
            part.place(run)
            return [n for i, sig in part.written.items() for n in (i, *sig)]

        sizes = download.manifest.sizes
        runs = parallel.split(needed, [sizes[i] for i in needed], workers)
        step = 1 + SIGNATURE
        for flat in parallel.run_parallel(runs, place_run, download.bar.update):
            signatures = zip(*(flat[k::step] for k in range(1, step)), strict=True)
            download.written.update(zip(flat[::step], signatures, strict=True))


def _set_dir_modes(root: str, manifest: Manifest, needed: list[int] | None, mode_mask: int,
                   made: int) -> None:
    """Gives the folders made in the staging folder the manifest's modes, deepest first (a
    read-only one is set after what lies in it): those of `needed` entries and every folder one
    lies in (`needed` None: every folder of the manifest). All were made with mode `made`, so
    only the others are set."""
    modes = {manifest.paths[i]: manifest.modes[i] & mode_mask
             for i, kind in enumerate(manifest.kinds) if kind == "dir"}
    staged = modes.keys() if needed is None else _staged_dirs(manifest, needed)
    other = [path for path in staged if modes.get(path, 0o755 & mode_mask) != made]
    for path in sorted(other, key=lambda p: p.count("/"), reverse=True):
        os.chmod(f"{root}/{path}", modes.get(path, 0o755 & mode_mask))


def _staged_dirs(manifest: Manifest, needed: list[int]) -> set[str]:
    """The needed folders, and every folder a needed entry lies in."""
    dirs: set[str] = set()
    for i in needed:
        path = manifest.paths[i]
        if manifest.kinds[i] == "dir":
            dirs.add(path)
        while "/" in path:
            path = path.rpartition("/")[0]
            if path in dirs:
                break
            dirs.add(path)
    return dirs


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
