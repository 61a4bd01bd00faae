"""Helpers of the client suite (a module of its own: `conftest` is an ambiguous import name)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support import TcpProxy, free_port  # noqa: F401 - re-exported for the client suite

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
