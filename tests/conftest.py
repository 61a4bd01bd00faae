"""Fixtures shared by the whole suite: real Docker, real Btrfs (loopback), a real HTTP server.

Nothing here skips: a missing component is a failure, because `make test` installs them all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from support import copy_project

from mistryd.config import from_dict
from mistryd.docker_runner import remove_instance_images
from mistryd.server import Server
from mistryd.web import create_app
from mistryd.web.http import make_http_server, stop_http_server


@pytest.fixture(scope="session", autouse=True)
def client_state_in_a_temporary_cache(tmp_path_factory):
    """`mistry` remembers the files it placed in a target under $XDG_CACHE_HOME: the suite's
    clients keep that in a folder of the run, not in the home folder of whoever runs it."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture
def signal_dir(tmp_path):
    """A folder to mount at /signal in build containers: `client-waiting` ends when `go` exists."""
    path = tmp_path / "signal"
    path.mkdir()
    return path


def pytest_collection_modifyitems(items):
    """Markers follow the fixtures a test really uses, so `pytest -m "not docker"` is an honest,
    fast subset (pure logic and real files only) and `-m "not btrfs"` needs no loop device."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & {"docker_engine", "start_server"}:
            item.add_marker(pytest.mark.docker)
        callspec = getattr(item, "callspec", None)
        on_btrfs = callspec is not None and callspec.params.get("fs_kind") == "btrfs"
        if "btrfs_root" in used or on_btrfs:
            item.add_marker(pytest.mark.btrfs)


@pytest.fixture(scope="session")
def docker_engine():
    """The Docker engine must answer: `make test` starts it."""
    out = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, f"Docker is not answering (run scripts/setup.sh): {out.stderr}"
    return out.stdout.strip()


@pytest.fixture(scope="session")
def btrfs_root():
    """A loopback Btrfs file system for the session, unmounted and deleted afterwards."""
    base = Path(tempfile.mkdtemp(prefix="mistryd-btrfs-", dir="/var/tmp"))
    image, mount = base / "fs.img", base / "mnt"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "3G", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["plain", "btrfs"])
def fs_kind(request):
    """Run a test once per storage adapter."""
    return request.param


@pytest.fixture
def build_root(request, tmp_path):
    """A fresh build_path on the file system the test asks for (plain by default); the loopback
    Btrfs is made only for tests that ask for it."""
    kind = request.getfixturevalue("fs_kind") if "fs_kind" in request.fixturenames else "plain"
    if kind == "btrfs":
        path = request.getfixturevalue("btrfs_root") / f"builds-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        yield path
        subprocess.run(["btrfs", "subvolume", "list", "-o", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path = tmp_path / "builds"
        path.mkdir()
        yield path


@dataclass
class RunningServer:
    server: Server
    url: str
    projects_path: Path
    build_path: Path
    _http: object
    _thread: threading.Thread
    _stopped: bool = False

    def post_job(self, body: dict | str | bytes, asynchronous: bool = False, **kw):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        url = f"{self.url}/jobs" + ("?async" if asynchronous else "")
        return requests.post(url, data=data, timeout=kw.pop("timeout", 300), **kw)

    def build(self, project: str, **fields) -> dict:
        r = self.post_job({"project": project, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.stop(grace=0)  # first, so that waiting requests get their answers
        stop_http_server(self._http)
        self._thread.join(5)
        remove_instance_images(self.build_path)  # image tags are per server: no pile-up


@pytest.fixture
def start_server(docker_engine, tmp_path, build_root):
    """start_server(projects=[...], **config) -> RunningServer on 127.0.0.1 (a free port)."""
    running: list[RunningServer] = []

    def start(projects=("hello",), build_path: Path | None = None,
              projects_path: Path | None = None, project_overrides: dict | None = None,
              **config) -> RunningServer:
        """`projects` names the test projects to copy; `project_overrides` is the config's
        `projects` key (per-project limits)."""
        if project_overrides:
            config["projects"] = project_overrides
        pp = projects_path or tmp_path / "projects"
        if projects_path is None:
            pp.mkdir(exist_ok=True)
            for name in projects:
                if not (pp / name).exists():
                    copy_project(pp, name)
        cfg = from_dict({"projects_path": str(pp), "build_path": str(build_path or build_root),
                         "addr": "127.0.0.1:0", "job_concurrency": 2,
                         # builds in this process's threads: builder processes are the `mistryd`
                         # command's (tests/integration/test_builder_processes.py)
                         "builder_processes": 0, **config})
        server = Server(cfg)
        server.start()
        http = make_http_server(create_app(server), cfg)
        thread = threading.Thread(target=http.run, daemon=True)
        thread.start()
        rs = RunningServer(server, f"http://127.0.0.1:{http.effective_port}", pp,
                           cfg.build_path, http, thread)
        running.append(rs)
        return rs

    yield start
    for rs in running:
        rs.stop()
