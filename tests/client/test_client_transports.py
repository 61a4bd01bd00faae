"""rsync (our daemon, started by a real `mistryd` process) and scp (sshd on loopback), end to end,
with the upstream client's exact commands."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest
from client_helpers import MISTRYD, TREE_FILES, free_port, run_mistry, tree_of
from support import copy_project


@pytest.fixture
def mistryd_with_rsync(docker_engine, tmp_path):
    """A real `mistryd --config` process with `rsync_addr` set; stopped with SIGTERM."""
    projects = tmp_path / "projects"
    projects.mkdir()
    for name in ("client-tree", "hello"):
        copy_project(projects, name)
    port, rsync_port = free_port(), free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "projects_path": str(projects), "build_path": str(tmp_path / "builds"),
        "addr": f"127.0.0.1:{port}", "rsync_addr": f"127.0.0.1:{rsync_port}",
        "job_concurrency": 2, "filesystem": "plain"}))
    proc = subprocess.Popen([str(MISTRYD), "--config", str(config)], stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stderr:  # the server says so once it listens (rsync daemon first)
            if "listening on" in line:
                break
        else:
            pytest.fail(f"mistryd did not start (exit code {proc.wait()})")
        yield port, rsync_port, tmp_path / "builds"
    finally:
        proc.terminate()
        proc.wait(30)
    with pytest.raises(OSError):  # the rsync daemon stopped with the server
        socket.create_connection(("127.0.0.1", rsync_port), timeout=2).close()


def test_rsync_transport_and_upstreams_command(mistryd_with_rsync, tmp_path):
    port, rsync_port, builds = mistryd_with_rsync
    out = tmp_path / "out"
    r = run_mistry(["build", "--project", "client-tree", "-t", str(out), "--json-result",
                    "--transport", "rsync", "--transport-user", "someone",
                    "--transport-port", str(rsync_port)], port=port)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert tree_of(out) == TREE_FILES

    # exactly what upstream's Go client runs, against our daemon
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    src = f"user@127.0.0.1::mistry/client-tree/ready/{info['ID']}/data/artifacts/"
    done = subprocess.run(["rsync", "-rtlp", f"--port={rsync_port}", src, f"{upstream}/"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert tree_of(upstream) == TREE_FILES

    # read-only, and our own state is not exposed
    up = subprocess.run(["rsync", "-r", f"--port={rsync_port}", str(out / "top.txt"),
                         "127.0.0.1::mistry/client-tree/"], capture_output=True, text=True,
                        check=False)
    assert up.returncode != 0 and "read only" in up.stderr
    state = subprocess.run(["rsync", "-r", f"--port={rsync_port}", "127.0.0.1::mistry/.mistryd/",
                            str(tmp_path / "state")], capture_output=True, text=True, check=False)
    assert state.returncode != 0 and not list((tmp_path / "state").glob("*"))
    assert (builds / ".mistryd").is_dir()

    # --clear-target with rsync
    (out / "stale.txt").write_text("old")
    r = run_mistry(["build", "--project", "client-tree", "-t", str(out), "--clear-target",
                    "--transport", "rsync", "--transport-port", str(rsync_port)], port=port)
    assert r.returncode == 0, r.stderr
    assert tree_of(out) == TREE_FILES


def test_scp_transport(start_server, sshd, tmp_path):
    server = start_server(projects=("client-tree", "hello"))
    port = int(server.url.rsplit(":", 1)[1])
    out = tmp_path / "out"
    r = run_mistry(["build", "--project", "hello", "-t", str(out), *sshd.transport_args(),
                    "--transport-user", os.environ.get("USER", "root")], port=port)
    assert r.returncode == 0, r.stderr
    assert (out / "out.txt").read_text() == "hello\n"
    out2 = tmp_path / "out2"
    r = run_mistry(["build", "--project", "client-tree", "-t", str(out2),
                    *sshd.transport_args()], port=port)
    assert r.returncode == 0, r.stderr
    assert (out2 / "a" / "b" / "deep.txt").read_text() == "deep\n"
    assert os.access(out2 / "run.sh", os.X_OK)
    assert (out2 / "empty").is_dir()
    # scp copies what links point to (as upstream's scp transport did): use http or rsync
    # to keep links as links
    assert (out2 / "inside-link").read_text() == "deep\n"


def test_a_failed_transfer_is_reported(start_server, tmp_path):
    server = start_server(projects=("hello",))
    port = int(server.url.rsplit(":", 1)[1])
    r = run_mistry(["build", "--project", "hello", "-t", str(tmp_path / "o"), "--transport",
                    "rsync", "--transport-port", str(free_port())], port=port)
    assert r.returncode == 6 and "rsync failed" in r.stderr
