"""Helpers of the client suite (a module of its own: `conftest` is an ambiguous import name)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import requests
from support import TcpProxy, free_port  # noqa: F401 - re-exported for the client suite

from mistry_client.sse import events

REPO = Path(__file__).resolve().parents[2]
MISTRY = REPO / ".venv" / "bin" / "mistry"
MISTRYD = REPO / ".venv" / "bin" / "mistryd"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def run_mistry(args: list[str], port: int | None = None, timeout: float = 180,
               env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the installed `mistry` command; MISTRY_HOST/MISTRY_PORT point at the server."""
    full_env = {**os.environ, "MISTRY_HOST": "127.0.0.1", **(env or {})}
    if port is not None:
        full_env["MISTRY_PORT"] = str(port)
    return subprocess.run([str(MISTRY), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=full_env, **kw)


def one_line(r: subprocess.CompletedProcess) -> str:
    """The one line `mistry` wrote on stderr (and never a traceback)."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def end_event(url: str, project: str, build_id: str) -> dict:
    """The data of the `end` event of a finished build's log stream, read straight from the server."""
    with requests.get(f"{url}/log/{project}/{build_id}", stream=True, timeout=60) as r:
        for event in events(r.iter_content(chunk_size=None)):
            if event.event == "end":
                return json.loads(event.data)
    raise AssertionError("the log stream ended without an end event")


def await_log_line(url: str, project: str, build_id: str, wanted: str) -> None:
    """Block until the build's log has the line `wanted` (so the build is running)."""
    with requests.get(f"{url}/log/{project}/{build_id}", stream=True, timeout=120) as r:
        for event in events(r.iter_content(chunk_size=None)):
            assert event.event != "end", f"the build ended before {wanted!r}: {event.data}"
            if event.data == wanted:
                return
    raise AssertionError(f"the log stream ended without {wanted!r}")


CLIENT_PROJECTS = ("hello", "client-params", "client-failing", "client-tree", "client-big")


class CuttingProxy(TcpProxy):
    """A proxy that cuts a connection once the server has sent `cut_after` bytes on it, `cuts`
    times in all: a dropped link, made on purpose."""

    def __init__(self, upstream_port: int, cut_after: int, cuts: int):
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cuts_done = 0
        super().__init__(upstream_port)

    def forward(self, data: bytes, to_client: bool, sent: int) -> tuple[bytes, bool]:
        if to_client and sent + len(data) >= self.cut_after and self._take_cut():
            return data[: self.cut_after - sent], True
        return data, False

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts_left <= 0:
                return False
            self.cuts_left -= 1
            self.cuts_done += 1
            return True


class RecordingProxy(TcpProxy):
    """A proxy that keeps what clients send, to count their requests."""

    def __init__(self, upstream_port: int):
        self.sent = bytearray()
        super().__init__(upstream_port)

    def forward(self, data: bytes, to_client: bool, sent: int) -> tuple[bytes, bool]:
        if not to_client:
            with self._lock:
                self.sent += data
        return data, False

    def request_lines(self) -> list[str]:
        """["GET /path", ...] in the order they came (one client, one request at a time)."""
        with self._lock:
            text = self.sent.decode("latin-1")
        # a request line may follow a body on the same line (bodies end without a newline)
        return [f"{m[0]} {m[1]}" for m in
                re.findall(r"(GET|POST|PUT|DELETE|HEAD) (/\S*) HTTP/1\.1\r\n", text)]


# What `client-tree` makes: {relative path: ("file", mode, content) | ("dir", mode) |
# ("link", target)}
TREE_FILES = {
    "a": ("dir", 0o755), "a/b": ("dir", 0o755), "a/b/deep.txt": ("file", 0o600, "deep\n"),
    "absolute-link": ("link", "/etc/passwd"), "empty": ("dir", 0o755),
    "escaping-link": ("link", "../../build_info.json"), "inside-link": ("link", "a/b/deep.txt"),
    "run.sh": ("file", 0o755, "#!/bin/sh\necho hi\n"), "top.txt": ("file", 0o644, "top\n"),
}


def tree_of(root: Path) -> dict:
    """The same description of what is in `root` (links not followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            mode = full.lstat().st_mode & 0o7777
            if full.is_symlink():
                found[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                found[rel] = ("dir", mode)
            else:
                found[rel] = ("file", mode, full.read_text())
    return found


class TamperingProxy(TcpProxy):
    """A proxy that changes the first `pattern` it sees in the server's answers into
    `replacement` (same length), once: bytes corrupted on the way, with the framing intact."""

    def __init__(self, upstream_port: int, pattern: bytes, replacement: bytes):
        assert len(pattern) == len(replacement)
        self.pattern = pattern
        self.replacement = replacement
        self.tampered = 0
        super().__init__(upstream_port)

    def forward(self, data: bytes, to_client: bool, sent: int) -> tuple[bytes, bool]:
        if to_client and self.pattern in data:
            with self._lock:
                if not self.tampered:
                    self.tampered += 1
                    return data.replace(self.pattern, self.replacement, 1), False
        return data, False


def exact_tree_of(root: Path) -> dict:
    """{relative path: ("file", mode, sha256) | ("dir", mode) | ("link", target)}: what is in
    `root`, content included (links not followed)."""
    import hashlib

    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = full.lstat()
            if full.is_symlink():
                found[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                found[rel] = ("dir", st.st_mode & 0o7777)
            else:
                found[rel] = ("file", st.st_mode & 0o7777,
                              hashlib.sha256(full.read_bytes()).hexdigest())
    return found


def inodes_of(root: Path) -> dict[str, int]:
    """{relative path: inode} of the regular files below `root`."""
    return {str(p.relative_to(root)): p.lstat().st_ino for p in root.rglob("*")
            if p.is_file() and not p.is_symlink()}
