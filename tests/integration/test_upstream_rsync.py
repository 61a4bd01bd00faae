"""Upstream's client over rsync: it has no port option, so it reaches the daemon on port 873 only,
and it asks for `<Path from the project's name on>/*`. A real mistryd (as root) with
`rsync_addr` on 127.0.0.1:873, a real build, the real rsync client with upstream's command line,
and upstream's own binary when the side-by-side switch names it."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import requests
from support import make_setup

from mistryd.rsyncd import check_port_free, privileged_port_problem, request_problem, upstream_client_misreads

REPO = Path(__file__).resolve().parents[2]
PROJECT = "upstream-rsync-tree"
UPSTREAM_PORT = 873  # upstream's client cannot ask for another
# The benchmark's side-by-side switch: set it to upstream's client binary (relative to the repo;
# upstream's builds live in ../shared/upstream/) to run upstream's client against mistryd too.
UPSTREAM_MISTRY = os.environ.get("UPSTREAM_MISTRY")


@pytest.fixture(scope="module")
def on_port_873(docker_engine, tmp_path_factory):
    """mistryd with its rsync daemon where upstream's client looks, and one cached build."""
    assert os.geteuid() == 0, "port 873 needs root: run this test as root (make test does)"
    try:
        check_port_free("127.0.0.1", UPSTREAM_PORT)
    except RuntimeError as e:
        pytest.fail(f"upstream's client reaches only port 873, which must be free for this test: {e}")
    root = tmp_path_factory.mktemp("upstream-rsync")
    setup = make_setup(root, (PROJECT,), rsync_addr=f"127.0.0.1:{UPSTREAM_PORT}", filesystem="plain")
    proc = setup.start()
    try:
        r = requests.post(f"{setup.url}/jobs", json={"project": PROJECT, "params": {}}, timeout=300)
        assert r.status_code == 201, r.text
        info = r.json()
        assert info["ExitCode"] == 0, info
        yield setup, info
    finally:
        proc.terminate()
        proc.wait(60)


def upstream_rsync_argv(info: dict, target: Path, user: str = "root") -> list[str]:
    """The command upstream's client runs (cmd/mistry/transport.go at f7b47b9): the source is
    BuildInfo's Path + "/*" from the first occurrence of the project's name on, no port option,
    and the target without a trailing slash."""
    src = info["Path"] + "/*"
    src = src[src.index(info["Project"]):]
    return ["rsync", "-rtlp", f"{user}@127.0.0.1::mistry/{src}", str(target).rstrip("/")]


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root as the transfer must keep it: kind, mode, content or link text."""
    entries: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                entries[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), int(st.st_mtime))
    return entries


def assert_fetched(info: dict, target: Path) -> None:
    artifacts = Path(info["Path"])
    expected = tree(artifacts)
    # the project's tree, so an empty build cannot pass: files, nested folders, links
    assert {"top.txt", ".hidden", "lib/nested/deeper/deep.txt", "empty", "inside-link",
            "escaping-link", "lib/absolute-link"} <= set(expected)
    assert tree(target) == expected


def test_upstreams_rsync_command_fetches_the_artifacts_from_port_873(on_port_873, tmp_path):
    setup, info = on_port_873
    assert info["Path"] == str(setup.builds / PROJECT / "ready" / info["ID"] / "data" / "artifacts")
    target = tmp_path / "target"
    target.mkdir()  # upstream's client creates it before it runs rsync
    done = subprocess.run(upstream_rsync_argv(info, target), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, start_new_session=True, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert_fetched(info, target)


if UPSTREAM_MISTRY is not None:  # off by default: CI's checkout may have no ../shared/upstream
    def test_upstreams_client_fetches_over_rsync_unchanged(on_port_873, tmp_path):
        setup, info = on_port_873
        client = (REPO / (UPSTREAM_MISTRY or "../shared/upstream/mistry")).resolve()
        assert client.is_file() and os.access(client, os.X_OK), (
            f"UPSTREAM_MISTRY names {client}, which is no executable: point it at upstream's "
            "`mistry` binary (e.g. UPSTREAM_MISTRY=../shared/upstream/mistry) or unset it")
        target = tmp_path / "target"
        done = subprocess.run([str(client), "build", "--host", "127.0.0.1", "--port", str(setup.port),
                               "--project", PROJECT, "--target", str(target), "--transport", "rsync"],
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                              start_new_session=True, check=False)
        assert done.returncode == 0, done.stderr + done.stdout
        assert_fetched(info, target)


# --- the rules behind it, on real files -------------------------------------------------------


def test_a_link_named_by_the_request_goes_as_a_link_but_is_never_gone_through(tmp_path):
    build = tmp_path / "p" / "ready" / "1"
    (build / "data" / "artifacts").mkdir(parents=True)
    (build / "data" / "params").mkdir()
    (build / "build_info.json").write_text('{"ExitCode": 0, "ErrBuild": "", "Status": "succeeded"}')
    (build / "data" / "artifacts" / "up").symlink_to("../params")
    art = "p/ready/1/data/artifacts"
    assert request_problem(tmp_path, f"/{art}/up") is None  # upstream's `*`: sent as a link
    for through in (f"{art}/up/", f"{art}/up/.", f"{art}/up/x"):
        assert "through a symlink" in request_problem(tmp_path, through), through


def test_a_privileged_port_names_root_and_upstreams_port():
    message = privileged_port_problem("127.0.0.1", 873)
    assert "127.0.0.1:873" in message and "root" in message and "873" in message
    assert "--transport-port" in message


def test_a_project_named_inside_build_path_is_reported(tmp_path):
    build_path = Path("/srv/mistry/web-builds")
    assert upstream_client_misreads(build_path, ["web", "api", "mistry"]) == ["mistry", "web"]
    assert upstream_client_misreads(build_path, ["api"]) == []
