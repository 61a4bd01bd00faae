"""A build is untrusted: what its container leaves behind is defused or refused, on both storage
adapters, and its opaque params never reach another requester.

Each test plays the attacker with a real build (tests/projects/sec-*) on a real server.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import wait_for

from mistryd.ordered_output import BUSYBOX

pytestmark = pytest.mark.docker


def test_setuid_bits_and_special_files_never_survive_a_build(start_server, fs_kind):
    srv = start_server(projects=("sec-setuid",))
    info = srv.build("sec-setuid")
    assert info["ExitCode"] == 0 and info["Status"] == "succeeded", info
    artifacts = Path(info["Path"])
    shell = artifacts / "rootshell"
    assert stat.S_IMODE(shell.stat().st_mode) == 0o755  # the setuid bit is gone
    assert stat.S_IMODE((artifacts / "d").stat().st_mode) == 0o775  # and the setgid one
    assert not (artifacts / "fifo").exists()
    assert "removed setuid/setgid bits from 2 file(s)" in info["ContainerStdouterr"]
    # the build did not run as root, and other users of the host cannot reach the build folder
    assert int((artifacts / "uid.txt").read_text()) != 0
    assert srv.build_path.stat().st_mode & 0o007 == 0
    assert artifacts.parent.parent.stat().st_mode & 0o007 == 0


def test_the_client_never_restores_setuid_bits_unless_asked(start_server, tmp_path):
    """A build kept from before sanitizing existed may still hold a setuid file."""
    srv = start_server(projects=("sec-setuid",))
    info = srv.build("sec-setuid")
    os.chmod(Path(info["Path"]) / "plain.txt", 0o4755)  # what an old build could hold
    port = srv.url.rsplit(":", 1)[1]

    def fetch(target: Path, *flags: str) -> int:
        out = subprocess.run([sys.executable, "-m", "mistry_client.cli", "build", "--project",
                              "sec-setuid", "--host", "127.0.0.1", "--port", port, "--target",
                              str(target), *flags], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return stat.S_IMODE((target / "plain.txt").stat().st_mode)

    assert fetch(tmp_path / "plain") == 0o755
    assert fetch(tmp_path / "kept", "--keep-special-bits") == 0o4755


def test_artifacts_swapped_for_a_link_to_etc_are_refused(start_server, fs_kind):
    srv = start_server(projects=("sec-artifacts-link",))
    info = srv.build("sec-artifacts-link")
    assert info["Status"] == "failed" and "refused" in info["ErrBuild"], info
    assert "/data/artifacts is a symlink" in info["ErrBuild"]
    build_id = info["ID"]
    for path in (f"artifacts/sec-artifacts-link/{build_id}/passwd",
                 f"artifacts/sec-artifacts-link/{build_id}/",
                 f"artifacts/sec-artifacts-link/{build_id}.tar"):
        r = requests.get(f"{srv.url}/{path}", timeout=10)
        assert r.status_code == 404, (path, r.status_code)
        assert "root:" not in r.text
    ready = srv.build_path / "sec-artifacts-link" / "ready" / build_id / "data" / "artifacts"
    assert ready.is_dir() and not ready.is_symlink() and list(ready.iterdir()) == []
    again = srv.build("sec-artifacts-link")  # a refused build is never answered from cache
    assert again["Cached"] is False


def test_a_cache_swapped_for_a_link_never_reaches_the_next_build(start_server, fs_kind):
    srv = start_server(projects=("sec-cache-link",))
    first = srv.build("sec-cache-link", group="g")
    assert first["Status"] == "failed" and "/data/cache is a symlink" in first["ErrBuild"]
    second = srv.build("sec-cache-link", group="g", rebuild=True)
    assert second["Incremental"] is False  # nothing is carried from a refused build
    assert not (srv.build_path / "sec-cache-link" / "groups" / "g").exists()


def test_opaque_params_reach_the_container_and_nobody_else(start_server):
    srv = start_server(projects=("sec-secret",))
    first = srv.build("sec-secret", params={"env": "prod", "_deploy_token": "s3cr3t-first"})
    assert first["Status"] == "succeeded", first
    assert (Path(first["Path"]) / "token.txt").read_text() == "present\n"
    assert first["Params"] == {"env": "prod"}
    r = srv.post_job({"project": "sec-secret",
                      "params": {"env": "prod", "_deploy_token": "another-one"}})
    assert r.status_code == 201 and r.json()["Cached"] is True
    build_id = first["ID"]
    pages = [r.text]
    for path in ("index/", f"job/sec-secret/{build_id}", "builds", "project/sec-secret",
                 f"job/sec-secret/{build_id}/out.log"):
        answer = requests.get(f"{srv.url}/{path}", timeout=10)
        assert answer.status_code == 200, path
        pages.append(answer.text)
    pages.append(requests.get(f"{srv.url}/job/sec-secret/{build_id}", timeout=10,
                              headers={"Accept": "application/json"}).text)
    assert not any("s3cr3t-first" in page or "another-one" in page for page in pages)
    folder = srv.build_path / "sec-secret" / "ready" / build_id
    assert sorted(os.listdir(folder / "data" / "params")) == ["env"]
    assert "s3cr3t" not in (folder / "build_info.json").read_text()
    db = sqlite3.connect(srv.build_path / ".mistryd" / "index.sqlite")
    rows = db.execute("SELECT params, opaque, info FROM builds").fetchall()
    assert rows and not any("s3cr3t" in json.dumps(row) for row in rows)


@pytest.mark.parametrize("body", [
    '{"project": "hello", "group": "\\ud800"}',
    '{"project": "hello", "params": {"k": "\\udfff"}}',
    '{"project": "hello", "params": {"\\ud800": "v"}}',
    '{"project": "hello", "group": "a\\u202eb"}',
    '{"project": "hello", "Project": "hello"}',
])
def test_text_that_is_not_unicode_or_hides_itself_is_refused(start_server, body):
    srv = start_server(projects=("hello",))
    for _ in range(3):  # more than the backlog, if anything leaked
        r = srv.post_job(body, asynchronous=True, timeout=10)
        assert r.status_code == 400, r.text
        assert "error" in r.json()
    assert srv.server.scheduler.flights() == []
    assert srv.build("hello")["ExitCode"] == 0
    for page in ("", "builds", "project/hello"):
        assert requests.get(f"{srv.url}/{page}", timeout=10).status_code == 200


def test_admission_is_transactional_when_the_index_cannot_be_written(start_server):
    """The job's record could not be written (a busy or full disk): nothing stays registered,
    the client gets a 503 that says so, and the same request later builds normally."""
    srv = start_server(projects=("hello",), job_backlog=1)
    store = srv.server.store
    real = store.record_queued
    failures = []

    def failing_once(*args, **kwargs):
        if not failures:
            failures.append(args)
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args, **kwargs)

    store.record_queued = failing_once
    r = srv.post_job({"project": "hello"}, timeout=30)
    assert r.status_code == 503 and "could not record" in r.json()["error"], r.text
    assert srv.server.scheduler.flights() == [] and srv.server.queue.stats().queued == 0
    info = srv.build("hello")  # neither wedged nor refused by a leaked backlog slot
    assert info["ExitCode"] == 0 and info["Cached"] is False


def test_a_cancel_that_loses_the_race_says_so(start_server):
    """The container ended successfully just before the cancel arrived: 409, not 200."""
    import threading

    srv = start_server(projects=("hello",))
    runner = srv.server.runner
    real_run = runner.run
    container_done, cancel_sent = threading.Event(), threading.Event()

    def run_then_hold(*args, **kwargs):
        result = real_run(*args, **kwargs)
        container_done.set()
        cancel_sent.wait(30)
        return result

    runner.run = run_then_hold
    build_id = srv.post_job({"project": "hello"}, asynchronous=True).json()["id"]
    assert container_done.wait(120)
    answer: list[requests.Response] = []
    canceller = threading.Thread(target=lambda: answer.append(requests.post(
        f"{srv.url}/jobs/hello/{build_id}/cancel", timeout=60)))
    canceller.start()
    flight = srv.server.scheduler.in_flight("hello", build_id)
    wait_for(flight.job.cancel.is_set, timeout=30, interval=0.01)
    cancel_sent.set()
    canceller.join(60)
    assert answer[0].status_code == 409, answer[0].text
    assert "before the cancel took effect" in answer[0].json()["error"]
    info = requests.get(f"{srv.url}/job/hello/{build_id}", timeout=10,
                        headers={"Accept": "application/json"}).json()
    assert info["Status"] == "succeeded"


def test_a_build_cannot_touch_the_output_plumbing_or_hold_it_open(start_server, caplog):
    """The static shell and the FIFOs mistryd mounts at /.mistryd are read-only to the build, and
    a writer it leaves behind as it exits dies with the container: the log ends with the build."""
    srv = start_server(projects=("sec-output",))
    with caplog.at_level(logging.WARNING, logger="mistryd"):
        info = srv.build("sec-output")
    assert info["ExitCode"] == 0, info["ContainerStdouterr"]
    lines = info["ContainerStdouterr"].splitlines()
    assert sum(line.startswith("tamper refused: ") for line in lines) == 5, lines
    assert not any(line.startswith("tamper worked") for line in lines), lines
    assert lines[-1] == "left a writer behind"
    assert not [r for r in caplog.records if "did not end" in r.getMessage()]
    copy = srv.build_path / ".mistryd" / BUSYBOX.name
    assert copy.read_bytes() == BUSYBOX.read_bytes()
    ready = srv.build_path / "sec-output" / "ready" / info["ID"]
    assert not (ready / ".output").exists()
