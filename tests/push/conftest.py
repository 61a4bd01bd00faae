"""A real git server for push builds: bare repositories served by `git daemon` on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import free_port

GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True,
                          text=True).stdout.strip()


@dataclass
class GitRepo:
    """A bare repository `name`.git served at `url`, and a work tree that pushes to it."""

    url: str
    bare: Path
    work: Path

    def commit(self, files: dict[str, str], branch: str = "main", message: str = "change") -> str:
        if git("branch", "--show-current", cwd=self.work) != branch:
            git("checkout", "-q", "-B", branch, cwd=self.work)
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        git("push", "-q", "--force", str(self.bare), f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


@pytest.fixture
def git_server(tmp_path):
    """make_repo(name) -> GitRepo, served by a real `git daemon` on a free loopback port."""
    base = tmp_path / "git"
    base.mkdir()
    port = free_port()
    log = open(tmp_path / "git-daemon.log", "wb")  # noqa: SIM115 - the daemon writes it
    daemon = subprocess.Popen(["git", "daemon", "--export-all", "--reuseaddr", "--verbose",
                               f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}",
                               str(base)], stdout=log, stderr=log)

    def make_repo(name: str = "example-repo") -> GitRepo:
        bare, work = base / f"{name}.git", tmp_path / f"work-{name}"
        git("init", "-q", "--bare", str(bare), cwd=tmp_path)
        work.mkdir()
        git("init", "-q", cwd=work)
        return GitRepo(f"git://127.0.0.1:{port}/{name}.git", bare, work)

    deadline = time.monotonic() + 10
    while subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/none.git"],
                         capture_output=True).returncode != 0 and time.monotonic() < deadline:
        if b"Ready to rumble" in (tmp_path / "git-daemon.log").read_bytes():
            break
        time.sleep(0.05)
    make_repo.log = tmp_path / "git-daemon.log"  # type: ignore[attr-defined]
    yield make_repo
    daemon.terminate()
    daemon.wait(10)
    log.close()
