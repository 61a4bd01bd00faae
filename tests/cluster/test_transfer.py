"""The remote builder's client (mistryd/remote/transfer.py) against a real central server
(in-process, building nothing itself) on a real redis-server: this test takes the job from Redis
as a `mistryd worker` does and talks to the central server over HTTP through the client."""

from __future__ import annotations

import json
import os
import queue as threads_queue
import threading
from pathlib import Path

import pytest
import requests
from support import ADMIN, BUILD, BUILDER, READ, bearer

from mistryd.projects import folder_fingerprint
from mistryd.queue import JobKey, LeaseLost
from mistryd.queue.redis import RedisQueue
from mistryd.remote.transfer import Central, CentralRefused, LogShipper
from mistryd.store import Status

pytestmark = pytest.mark.docker


@pytest.fixture
def jobs(redis_server):
    """The shared queue as a builder sees it."""
    q = RedisQueue(redis_server.url)
    yield q
    q.close()


def take(central, jobs: RedisQueue, params: dict, group: str = "g"):
    """Submit a build to the central server, then take it as builder `remote-0`."""
    r = requests.post(f"{central.url}/jobs?async", headers=bearer(BUILD),
                      json={"project": "cache", "params": params, "group": group}, timeout=30)
    assert r.status_code == 201, r.text
    lease = jobs.take("remote-0", timeout=10)
    assert lease is not None and lease.key == JobKey("cache", r.json()["id"])
    return lease


def view(central, build_id: str) -> dict:
    return requests.get(f"{central.url}/job/cache/{build_id}",
                        headers={**bearer(ADMIN), "Accept": "application/json"},
                        timeout=10).json()


def finished_folder(where: Path, lease, count: str) -> Path:
    """A build folder as Builder._finish leaves it in ready/ on the builder."""
    folder = where / lease.key.id
    for sub in ("data/artifacts", "data/cache", "data/params"):
        (folder / sub).mkdir(parents=True)
    # as a careless builder might write it: its own Path, every param (the opaque ones too)
    record = {"ID": lease.key.id, "Project": "cache", "Params": lease.request["params"],
              "Group": lease.request["group"], "Path": str(folder / "data" / "artifacts"),
              "URL": "javascript:alert(1)", "StartedAt": "", "Status": "succeeded",
              "ExitCode": 0, "CacheFrom": {"Project": "../..", "Group": "g", "ID": "x"}}
    (folder / "build_info.json").write_text(json.dumps(record))
    (folder / "out.log").write_text(f"build {count}\n")
    (folder / "inputs.json").write_text("{}")
    (folder / "data" / "artifacts" / "count").write_text(f"{count}\n")
    (folder / "data" / "artifacts" / "big").write_bytes(os.urandom(50_000))
    (folder / "data" / "cache" / "count").write_text(f"{count}\n")
    (folder / "data" / "cache" / "python").symlink_to("/usr/bin/python3")  # a venv's kind
    return folder


def test_a_job_starts_and_its_context_arrives_as_the_project_is(central, jobs, tmp_path):
    project = central.projects_path / "cache"
    (project / "tools").mkdir()
    (project / "tools" / "run").write_text("#!/bin/sh\n")
    (project / "tools" / "run").chmod(0o755)
    (project / "hostname").symlink_to("/etc/hostname")  # kept as a link, as Docker keeps it
    (project / "again").symlink_to("tools/run")
    lease = take(central, jobs, {"v": "1"})
    client = Central(central.url, BUILDER)
    details = client.start(lease)
    assert details.request["params"] == {"v": "1"} and details.cache is None
    assert details.fingerprint == folder_fingerprint(project)
    assert details.settings == json.loads(json.dumps(details.settings)) and details.settings
    assert view(central, lease.key.id)["Status"] == "running"

    context = tmp_path / "contexts" / details.fingerprint
    client.fetch_context("cache", details.fingerprint, context)
    assert folder_fingerprint(context) == details.fingerprint  # what the worker's build checks
    assert os.readlink(context / "hostname") == "/etc/hostname"
    assert [p.name for p in context.parent.iterdir()] == [context.name]  # no temp folder left

    (project / "build.sh").write_text("echo changed\n")
    with pytest.raises(CentralRefused, match="409"):
        client.fetch_context("cache", details.fingerprint, tmp_path / "stale")
    assert not (tmp_path / "stale").exists()


def test_a_log_shipped_in_pieces_is_followed_live_with_no_gap(central, jobs, tmp_path):
    lease = take(central, jobs, {"v": "2"})
    client = Central(central.url, BUILDER)
    client.start(lease)
    local = tmp_path / "out.log"
    local.write_text("line 1\n")
    # the first piece reached the central server but its answer was lost: the shipper, still at
    # offset 0, is told the central server's size and goes on from there
    r = requests.post(f"{central.url}/api/builder/log/cache/{lease.key.id}",
                      params={"builder": lease.builder, "token": lease.token, "offset": 0},
                      headers=bearer(BUILDER), data=b"line 1\n", timeout=10)
    assert r.json() == {"offset": 7}
    lines: threads_queue.Queue[str] = threads_queue.Queue()

    def follow() -> None:
        try:
            with requests.get(f"{central.url}/log/cache/{lease.key.id}", headers=bearer(ADMIN),
                              stream=True, timeout=30) as sse:
                for line in sse.iter_lines(decode_unicode=True):
                    if line.startswith("data:"):
                        lines.put(line)
        except requests.RequestException:
            pass  # the central server stops at the test's end, mid-stream

    threading.Thread(target=follow, daemon=True).start()
    assert lines.get(timeout=10) == "data: line 1"
    shipper = LogShipper(client, lease, local)
    shipper.start()
    try:
        for n in range(2, 5):
            with open(local, "a") as f:
                f.write(f"line {n}\n")
            assert lines.get(timeout=10) == f"data: line {n}"  # live, while it grows
    finally:
        shipper.close()
    shipped = central.build_path / "cache" / "pending" / lease.key.id / "out.log"
    assert shipped.read_bytes() == local.read_bytes()  # no gap, no duplicate
    # a piece is bounded by max_body_bytes: a larger one is refused and nothing of it kept
    size = shipped.stat().st_size
    r = requests.post(f"{central.url}/api/builder/log/cache/{lease.key.id}",
                      params={"builder": lease.builder, "token": lease.token, "offset": size},
                      headers=bearer(BUILDER), data=b"x" * ((1 << 20) + 1), timeout=10)
    assert r.status_code == 413 and shipped.stat().st_size == size


def test_an_uploaded_build_lands_is_served_and_seeds_the_group(central, jobs, tmp_path):
    lease = take(central, jobs, {"v": "3", "_token": "hunter2"})
    client = Central(central.url, BUILDER)
    details = client.start(lease)
    assert details.request["params"]["_token"] == "hunter2"  # the builder's container needs it
    client.piece = 8192  # several pieces
    folder = finished_folder(tmp_path / "ready", lease, "1")
    client.upload(lease, folder)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the temp tar is gone
    assert jobs.wait(lease.key, timeout=10).status is Status.SUCCEEDED
    record = view(central, lease.key.id)
    assert record["Status"] == "succeeded" and record["BuildInfo"]["Builder"] == "remote"
    info = record["BuildInfo"]  # named by the central server, not by the builder's record
    assert (info["Params"], info["URL"], info["CacheFrom"]) == \
        ({"v": "3"}, f"job/cache/{lease.key.id}", None)
    landed = central.build_path / "cache" / "ready" / lease.key.id / "build_info.json"
    assert "hunter2" not in landed.read_text() and "hunter2" not in json.dumps(record)
    assert json.loads(landed.read_text())["Path"] == str(landed.parent / "data" / "artifacts")
    got = requests.get(f"{central.url}/artifacts/cache/{lease.key.id}/big",
                       headers=bearer(ADMIN), timeout=10)
    assert got.content == (folder / "data" / "artifacts" / "big").read_bytes()
    metrics = requests.get(f"{central.url}/metrics", headers=bearer(ADMIN), timeout=10).text
    assert 'mistryd_upload_bytes_total{builder="remote"}' in metrics
    assert 'mistryd_upload_seconds_count{builder="remote"} 1.0' in metrics

    # the group's next build, wherever it runs, starts from this one's cache
    following = take(central, jobs, {"v": "4"})
    details = client.start(following)
    assert details.cache == {"group": "g", "id": lease.key.id}
    seed = tmp_path / "seed"
    seed.mkdir()
    client.fetch_cache("cache", lease.key.id, seed)
    assert (seed / "data" / "cache" / "count").read_text() == "1\n"
    assert os.readlink(seed / "data" / "cache" / "python") == "/usr/bin/python3"
    assert json.loads((seed / "build_info.json").read_text())["ID"] == lease.key.id
    assert not (seed / "data" / "artifacts").exists()
    with pytest.raises(CentralRefused, match="404"):
        client.fetch_cache("cache", "0" * 64, tmp_path / "none")


def test_a_builder_that_lost_the_lease_lands_nothing(central, jobs, tmp_path):
    lease = take(central, jobs, {"v": "5"})
    client = Central(central.url, BUILDER)
    client.start(lease)
    stranger = lease.__class__(**{**lease.__dict__, "token": lease.token + 1})
    with pytest.raises(LeaseLost):
        client.start(stranger)
    with pytest.raises(LeaseLost):
        client.upload(stranger, finished_folder(tmp_path, lease, "1"))
    assert view(central, lease.key.id)["Status"] == "running"
    assert not (central.build_path / "cache" / "ready" / lease.key.id).exists()


def test_a_job_whose_project_changed_ends_failed_at_its_start(central, jobs):
    lease = take(central, jobs, {"v": "6"})
    (central.projects_path / "cache" / "build.sh").write_text("echo changed\n")
    with pytest.raises(LeaseLost):  # the job ended: no builder builds it
        Central(central.url, BUILDER).start(lease)
    outcome = jobs.wait(lease.key, timeout=10)
    assert outcome.status is Status.FAILED and "changed" in outcome.reason
    assert view(central, lease.key.id)["Status"] == "failed"


def test_only_builders_and_admins_use_the_builder_endpoints_and_builders_nothing_else(central,
                                                                                    jobs):
    lease = take(central, jobs, {"v": "7"})
    fingerprint = folder_fingerprint(central.projects_path / "cache")
    lease_params = {"builder": lease.builder, "token": lease.token}
    builder_calls = [  # (method, path, params, the answers to a builder's, then an admin's)
        ("POST", f"/api/builder/jobs/cache/{lease.key.id}/start", lease_params, (200, 200)),
        ("GET", f"/api/builder/context/cache/{fingerprint}", {}, (200, 200)),
        ("GET", f"/api/builder/cache/cache/{lease.key.id}", {}, (404, 404)),  # none yet
        # the admin's piece at offset 0 comes second: the log has the builder's byte
        ("POST", f"/api/builder/log/cache/{lease.key.id}", {**lease_params, "offset": 0},
         (200, 409)),
    ]
    for method, path, params, answers in builder_calls:
        for token in (READ, BUILD):
            r = requests.request(method, central.url + path, params=params, data=b"x",
                                 headers=bearer(token), timeout=10)
            assert r.status_code == 403 and "builder" in r.json()["error"], (path, r.text)
        got = tuple(requests.request(method, central.url + path, params=params, data=b"x",
                                     headers=bearer(token), timeout=10).status_code
                    for token in (BUILDER, ADMIN))
        assert got == answers, (path, got)
    for method, path in (("GET", f"/job/cache/{lease.key.id}"), ("GET", "/api/queue/stats"),
                         ("GET", "/metrics"), ("POST", "/jobs"),
                         ("GET", f"/artifacts/cache/{lease.key.id}/count")):
        r = requests.request(method, central.url + path, headers=bearer(BUILDER),
                             json={"project": "cache"}, timeout=10)
        assert r.status_code == 403, (method, path, r.status_code, r.text)


def test_the_log_of_a_job_taken_again_is_the_new_take_s_alone(central, jobs, tmp_path):
    first = take(central, jobs, {"v": "8"})
    client = Central(central.url, BUILDER)
    client.start(first)
    old = tmp_path / "old.log"
    old.write_text("the lost builder's line\n" * 3)
    with open(old, "rb") as f:
        assert client.send(first, "log", f, 0) == old.stat().st_size
    jobs.drop_builder("remote-0")  # that builder is gone: its job goes to another one
    second = jobs.take("remote-1-0", timeout=10)
    assert second is not None and second.key == first.key and second.token > first.token
    client.start(second)
    new = tmp_path / "new.log"
    new.write_text("the next take's line\n")
    with open(new, "rb") as f:
        assert client.send(second, "log", f, 0) == new.stat().st_size
    shipped = central.build_path / "cache" / "pending" / second.key.id / "out.log"
    assert shipped.read_bytes() == new.read_bytes()
    st = shipped.stat()
    assert central.server.queue.log_file(second.key) == f"{st.st_dev}:{st.st_ino}"
    with pytest.raises(LeaseLost), open(old, "rb") as f:  # the lost one is not heard any more
        client.send(first, "log", f, 0)


def test_an_upload_of_a_take_given_up_is_swept_when_the_next_begins(central, jobs, tmp_path):
    first = take(central, jobs, {"v": "9"})
    client = Central(central.url, BUILDER)
    client.start(first)
    client.piece = 4096
    landing = central.build_path / ".mistryd" / "landing" / "cache"
    with open(tmp_path / "half.tar", "wb+") as f:  # the lost builder got this far
        f.write(os.urandom(10_000))
        client.send(first, "result", f, 0)
    assert [p.name for p in landing.iterdir()] == [f"{first.key.id}.{first.token}"]
    jobs.drop_builder("remote-0")
    second = jobs.take("remote-1-0", timeout=10)
    assert second is not None and second.key == first.key
    client.start(second)
    client.upload(second, finished_folder(tmp_path / "ready", second, "1"))
    assert jobs.wait(second.key, timeout=10).status is Status.SUCCEEDED
    assert not list(landing.iterdir())  # the given-up take's pieces went with the next upload


def test_a_tar_stream_nobody_reads_leaves_no_thread_behind(central, jobs):
    """A HEAD (or a client that goes away before the body) must not leave the thread that
    writes the tar blocked on a full pipe."""
    project = central.projects_path / "cache"
    (project / "big").write_bytes(os.urandom(1 << 20))
    fingerprint = folder_fingerprint(project)
    for _ in range(3):
        r = requests.head(f"{central.url}/api/builder/context/cache/{fingerprint}",
                          headers=bearer(BUILDER), timeout=10)
        assert r.status_code == 200
    writers = [t for t in threading.enumerate() if t.name == "mistryd-tar-out"]
    for writer in writers:
        writer.join(10)
    assert not any(w.is_alive() for w in writers), "a tar writer is still blocked"
