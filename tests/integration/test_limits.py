"""Server-side timeouts, cancellation, and what a build container is allowed."""

import threading
import time

import pytest
import requests


def wait_running(srv, build_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flight = srv.server.scheduler.in_flight("sleeper", build_id)
        if flight is not None and flight.running and flight.job.log.path is not None \
                and "sleeping" in flight.job.log.path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError("the build did not start")


def test_build_timeout_per_project_kills_and_records(start_server):
    srv = start_server(projects=("sleeper", "hello"), build_timeout=600,
                       project_overrides={"sleeper": {"build_timeout": 1}})
    info = srv.build("sleeper", params={"sleep": "30"})
    assert info["Status"] == "timed-out"
    assert info["ErrBuild"] == "timed out after 1s"
    assert info["ExitCode"] != 0
    assert "timed out after 1s" in info["ContainerStdouterr"]
    again = srv.build("sleeper", params={"sleep": "30"})
    assert not again["Cached"]  # a timed-out build is never served from cache
    assert srv.build("hello")["Status"] == "succeeded"  # other projects keep the default


@pytest.mark.parametrize("how", ["post", "delete"])
def test_cancel_a_running_build_answers_every_waiter(start_server, how):
    srv = start_server(projects=("sleeper",))
    body = {"project": "sleeper", "params": {"sleep": "60"}}
    build_id = srv.post_job(body, asynchronous=True).json()["id"]
    waiter: list = []
    t = threading.Thread(target=lambda: waiter.append(srv.post_job(body).json()))
    t.start()
    wait_running(srv, build_id)
    url = f"{srv.url}/jobs/sleeper/{build_id}"
    r = requests.post(url + "/cancel", timeout=60) if how == "post" else \
        requests.delete(url, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["Status"] == "cancelled"
    t.join(60)
    assert waiter[0]["Status"] == "cancelled" and waiter[0]["Coalesced"]
    assert srv.server.store.get("sleeper", build_id).status.value == "cancelled"
    again = requests.post(url + "/cancel", timeout=10)
    assert again.status_code == 409 and "already ended" in again.json()["error"]
    assert requests.delete(f"{srv.url}/jobs/sleeper/{'0' * 64}", timeout=10).status_code == 404


def test_cancel_a_queued_build_ends_it_at_once(start_server):
    srv = start_server(projects=("sleeper",), job_concurrency=1)
    first = srv.post_job({"project": "sleeper", "params": {"sleep": "60"}}, asynchronous=True)
    wait_running(srv, first.json()["id"])
    queued = srv.post_job({"project": "sleeper", "params": {"sleep": "1"}}, asynchronous=True)
    queued_id = queued.json()["id"]
    r = requests.delete(f"{srv.url}/jobs/sleeper/{queued_id}", timeout=10)
    assert r.status_code == 200 and r.json()["Status"] == "cancelled"
    view = requests.get(f"{srv.url}/job/sleeper/{queued_id}",
                        headers={"Accept": "application/json"}, timeout=10).json()
    assert view["Status"] == "cancelled" and view["State"] == "ready"
    requests.delete(f"{srv.url}/jobs/sleeper/{first.json()['id']}", timeout=60)


def test_containers_are_unprivileged_and_limited(start_server):
    srv = start_server(projects=("inspect",), memory="256m", cpus=0.5, pids_limit=64,
                       project_overrides={"inspect": {"network_mode": "none"}})
    log = srv.build("inspect")["ContainerStdouterr"]
    assert "CapEff:\t0000000000000000" in log  # every capability dropped
    assert "NoNewPrivs:\t1" in log
    assert f"memory {256 * 1024 * 1024}" in log
    assert "pids 64" in log
    assert "cpu 50000" in log or "cpu 50000 100000" in log
    assert "net lo \n" in log or log.count("net lo") == 1


def test_default_network_is_bridge(start_server):
    srv = start_server(projects=("inspect",))
    log = srv.build("inspect")["ContainerStdouterr"]
    assert "eth0" in log


def test_mistry_cancel_command(start_server):
    import subprocess
    import sys
    from pathlib import Path

    srv = start_server(projects=("sleeper",))
    build_id = srv.post_job({"project": "sleeper", "params": {"sleep": "60"}},
                            asynchronous=True).json()["id"]
    wait_running(srv, build_id)
    port = srv.url.rsplit(":", 1)[1]
    mistry = str(Path(sys.executable).parent / "mistry")
    r = subprocess.run([mistry, "cancel", "--port", port, "sleeper", build_id],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"Cancelled sleeper/{build_id}" in r.stdout
    again = subprocess.run([mistry, "cancel", "--port", port, "sleeper", build_id],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "already ended" in again.stderr
