"""Helpers for tests that need more than a fixture: test projects and mistryd as a process.
(A module of its own: `from conftest import ...` is ambiguous with several conftest.py files.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

TEST_PROJECTS = Path(__file__).parent / "projects"


def copy_project(dest_root: Path, name: str, source: str | None = None) -> Path:
    """Copy tests/projects/<source or name> to dest_root/<name>."""
    dest = dest_root / name
    shutil.copytree(TEST_PROJECTS / (source or name), dest, symlinks=True)
    return dest


# --- mistryd as a separate process (crash, signal and load tests) ------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Setup:
    """A config file for a mistryd process: its projects, build folder, port and URL."""

    config: Path
    projects: Path
    builds: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> subprocess.Popen:
        return start_mistryd(self.config, self.port)


def make_setup(root: Path, projects: tuple[str, ...], **config) -> Setup:
    """root/config.json serving copies of the named test projects on a free loopback port."""
    (root / "projects").mkdir()
    for name in projects:
        copy_project(root / "projects", name)
    port = free_port()
    path = root / "config.json"
    path.write_text(json.dumps({"projects_path": "projects", "build_path": "builds",
                                "addr": f"127.0.0.1:{port}", "gc_interval": 0, **config}))
    return Setup(path, root / "projects", root / "builds", port)


def start_mistryd(config_path: Path, port: int) -> subprocess.Popen:
    """Start the real `mistryd` command; its log goes to mistryd.log beside the config."""
    log = open(Path(config_path).parent / "mistryd.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "mistryd.cli", "--config", str(config_path)],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/index/?limit=1", timeout=1)
            return proc
        except requests.ConnectionError:
            assert proc.poll() is None, (Path(config_path).parent / "mistryd.log").read_text()
            time.sleep(0.1)
    raise AssertionError("mistryd did not start")


def wait_for(predicate, timeout: float = 120, interval: float = 0.2):
    """Poll `predicate` until it is true (for conditions only visible from outside a process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not met in time")
