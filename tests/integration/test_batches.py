"""Dependency-ordered batches on a real server with real builds: order, parallel branches, a
failure skipping its dependents, cache hits, refusals naming the problem, roles, and a batch that
goes on after mistryd is killed and started again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from datetime import datetime

import requests
from support import ADMIN, BUILD, READ, TOKENS, RedisServer, bearer, make_setup, wait_for

JSON = {"Accept": "application/json"}


def post_batch(url: str, jobs: list[dict], headers: dict | None = None) -> requests.Response:
    return requests.post(f"{url}/batches", json={"jobs": jobs}, headers=headers, timeout=30)


def batch_of(url: str, batch_id: str, headers: dict | None = None) -> dict:
    r = requests.get(f"{url}/batches/{batch_id}", headers={**JSON, **(headers or {})},
                     timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def finished_batch(url: str, batch_id: str, timeout: float = 180,
                   headers: dict | None = None) -> dict:
    wait_for(lambda: batch_of(url, batch_id, headers)["status"] != "running", timeout=timeout)
    return batch_of(url, batch_id, headers)


def build_of(url: str, job: dict, headers: dict | None = None) -> dict:
    r = requests.get(f"{url}/{job['url']}", headers={**JSON, **(headers or {})}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["BuildInfo"]


def started(info: dict) -> float:
    return datetime.fromisoformat(info["StartedAt"].replace("Z", "+00:00")).timestamp()


def ended(info: dict) -> float:
    return started(info) + info["Duration"] / 1e9


def sleeper(name: str, secs: str = "1", needs=(), **params: str) -> dict:
    return {"name": name, "project": "sleeper", "params": {"sleep": secs, "n": name, **params},
            "needs": list(needs)}


def test_a_chain_runs_in_order_beside_an_independent_branch_and_again_from_cache(start_server):
    srv = start_server(projects=("sleeper", "hello"))
    jobs = [sleeper("c", needs=["b"]), sleeper("b", needs=["a"]), sleeper("a"),
            {"name": "d", "project": "hello", "params": {"n": "d"}, "group": "g"}]
    r = post_batch(srv.url, jobs)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["url"] == f"batches/{created['id']}"
    assert set(created["jobs"]) == {"a", "b", "c", "d"}
    assert all(j["url"] == f"job/{jobs[i]['project']}/{j['id']}"
               for i, j in enumerate(created["jobs"][n["name"]] for n in jobs))
    # the jobs that need nothing are queued by the POST itself; the others wait
    first = batch_of(srv.url, created["id"])
    assert first["status"] == "running"
    assert {first["jobs"][n]["status"] for n in "ad"} <= {"queued", "running", "succeeded"}
    assert first["jobs"]["c"]["status"] == "waiting" and first["jobs"]["c"]["needs"] == ["b"]

    done = finished_batch(srv.url, created["id"])
    assert done["status"] == "succeeded" and done["finished_at"]
    assert {n: j["status"] for n, j in done["jobs"].items()} == dict.fromkeys("abcd", "succeeded")
    info = {n: build_of(srv.url, j) for n, j in done["jobs"].items()}
    assert started(info["b"]) >= ended(info["a"]) and started(info["c"]) >= ended(info["b"])
    # the independent branch did not wait for the chain
    assert started(info["d"]) < ended(info["a"])
    assert all(done["jobs"][n]["id"] == created["jobs"][n]["id"] for n in "abcd")

    # the same batch again: every job is a cache hit, so it has ended by the POST's answer
    again = post_batch(srv.url, jobs)
    assert again.status_code == 201
    hits = batch_of(srv.url, again.json()["id"])
    assert hits["status"] == "succeeded"
    assert [hits["jobs"][n]["id"] for n in "abcd"] == [created["jobs"][n]["id"] for n in "abcd"]


def test_a_failure_skips_its_dependents_and_names_the_failed_job(start_server):
    srv = start_server(projects=("sleeper",))
    r = post_batch(srv.url, [sleeper("a", exit="3"), sleeper("b", needs=["a"]),
                             sleeper("c", needs=["b"]), sleeper("d", secs="2")])
    assert r.status_code == 201, r.text
    created = r.json()
    done = finished_batch(srv.url, created["id"])
    jobs = done["jobs"]
    assert done["status"] == "failed"
    assert (jobs["a"]["status"], jobs["d"]["status"]) == ("failed", "succeeded")
    assert jobs["b"]["status"] == "skipped"
    assert jobs["b"]["reason"] == "needs 'a', which failed"
    assert jobs["c"]["status"] == "skipped"
    assert jobs["c"]["reason"] == "needs 'b', which was skipped because 'a' failed"
    for name in "bc":  # never built
        missing = requests.get(f"{srv.url}/{jobs[name]['url']}", headers=JSON, timeout=10)
        assert missing.status_code == 404
    html = requests.get(f"{srv.url}/batches/{created['id']}", headers={"Accept": "text/html"},
                        timeout=10)
    assert html.status_code == 200 and "text/html" in html.headers["Content-Type"]
    assert "needs &#39;a&#39;, which failed" in html.text


def test_a_full_backlog_keeps_jobs_waiting_instead_of_failing_them(start_server):
    """More jobs that need nothing than the backlog holds: POST /jobs would answer 503 for the
    rest; a batch's jobs wait and are submitted as room comes."""
    srv = start_server(projects=("sleeper",), job_concurrency=1, job_backlog=1)
    r = post_batch(srv.url, [sleeper(f"j{i}") for i in range(5)] + [
        sleeper("last", needs=[f"j{i}" for i in range(5)])])
    assert r.status_code == 201, r.text
    statuses = {j["status"] for j in batch_of(srv.url, r.json()["id"])["jobs"].values()}
    assert "waiting" in statuses  # not all of them fitted
    done = finished_batch(srv.url, r.json()["id"])
    assert done["status"] == "succeeded", done


def test_cycles_unknown_names_and_bad_jobs_are_refused_naming_them(start_server):
    srv = start_server(projects=("hello",))

    def refused(jobs) -> tuple[int, str]:
        r = requests.post(f"{srv.url}/batches", json={"jobs": jobs}, timeout=10)
        return r.status_code, r.json()["error"]

    hello = {"project": "hello"}
    status, error = refused([{"name": "a", **hello, "needs": ["b"]},
                             {"name": "b", **hello, "needs": ["a"]}])
    assert status == 422 and "form a cycle" in error
    assert error.startswith(("jobs a -> b -> a", "jobs b -> a -> b"))
    assert refused([{"name": "a", **hello, "needs": ["zz"]}]) == (
        422, "job 'a' needs 'zz', which is not a job of this batch (its jobs: a)")
    status, error = refused([{"name": "a", "project": "nope"}])
    assert status == 422 and error.startswith("job 'a': unknown project 'nope'")
    assert refused([{"name": "a", **hello}, {"name": "a", **hello}])[0] == 422
    # a job's own fields are checked as POST /jobs checks them, with the same message
    bad = {"project": "hello", "params": {"k": 1}}
    single = requests.post(f"{srv.url}/jobs", json=bad, timeout=10)
    status, error = refused([{"name": "a", **bad}])
    assert (status, error) == (single.status_code, f"job 'a': {single.json()['error']}")
    for body in (b"", b"{", b"[]", b'{"jobs": {}}'):
        r = requests.post(f"{srv.url}/batches", data=body, timeout=10)
        assert r.status_code == 400 and r.json()["error"]
    assert requests.get(f"{srv.url}/batches/{'0' * 32}", timeout=10).status_code == 404
    assert requests.get(f"{srv.url}/batches/..%2Fx", timeout=10).status_code == 404
    assert srv.server.store.open_batches() == []  # nothing refused was recorded


def test_posting_a_batch_needs_the_build_role_and_reading_it_read(start_server):
    limited = "limited-token-0123456789"
    srv = start_server(projects=("hello",), tokens=[*TOKENS, {
        "name": "ci-only", "token": limited, "role": "build", "groups": ["ci-*"]}])
    jobs = [{"name": "a", "project": "hello", "params": {"n": "auth"}}]
    assert post_batch(srv.url, jobs).status_code == 401
    assert post_batch(srv.url, jobs, headers=bearer(READ)).status_code == 403
    # a token limited to groups: every job must be in one of them, as for POST /jobs
    mixed = [{"name": "a", "project": "hello", "group": "ci-1"},
             {"name": "b", "project": "hello", "group": "nightly", "needs": ["a"]}]
    refused = post_batch(srv.url, mixed, headers=bearer(limited))
    assert refused.status_code == 403 and "'nightly'" in refused.json()["error"]
    assert srv.server.store.open_batches() == []
    r = post_batch(srv.url, jobs, headers=bearer(BUILD))
    assert r.status_code == 201, r.text
    url = f"{srv.url}/batches/{r.json()['id']}"
    assert requests.get(url, headers=JSON, timeout=10).status_code == 401
    wait_for(lambda: requests.get(url, headers={**JSON, **bearer(READ)}, timeout=10
                                  ).json()["status"] == "succeeded", timeout=120)


def test_a_batch_goes_on_after_mistryd_is_killed_and_started_again(tmp_path, docker_engine):
    """kill -9 while the first job runs: the restarted server runs it again (recovery) and its
    batch driver, reading the batch from the index, then runs the job that needs it."""
    setup = make_setup(tmp_path, ("sleeper",), job_concurrency=2)
    proc = setup.start()
    try:
        r = post_batch(setup.url, [sleeper("a", secs="4"), sleeper("b", needs=["a"])])
        assert r.status_code == 201, r.text
        batch_id = r.json()["id"]
        wait_for(lambda: batch_of(setup.url, batch_id)["jobs"]["a"]["status"] == "running")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = setup.start()
    try:
        assert batch_of(setup.url, batch_id)["jobs"]["b"]["status"] == "waiting"
        done = finished_batch(setup.url, batch_id)
        assert done["status"] == "succeeded", done
        a, b = (build_of(setup.url, done["jobs"][n]) for n in "ab")
        assert started(b) >= ended(a)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


BUILDER = "builder-token-0123456789"


def test_a_batch_on_the_shared_queue_runs_on_a_remote_builder(start_server, tmp_path):
    """With `queue` on Redis and a central server that builds nothing: the batch's jobs are
    built by a `mistryd worker`, in order, and a failure there skips its dependents here."""
    redis = RedisServer(tmp_path / "redis")
    worker = None
    try:
        central = start_server(projects=("sleeper",), queue=redis.url, job_concurrency=0,
                               tokens=[*TOKENS, {"name": "builders", "token": BUILDER,
                                                 "role": "builder"}])
        log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115 - the child owns it
        worker = subprocess.Popen(
            [sys.executable, "-m", "mistryd.cli", "worker", "--queue", redis.url, "--server",
             central.url, "--build-path", str(tmp_path / "remote"), "--concurrency", "2",
             "--name", "far", "--token", BUILDER, "--grace", "5"], stdout=log, stderr=log)
        r = post_batch(central.url, [sleeper("a"), sleeper("b", needs=["a"]),
                                     sleeper("x", exit="5"), sleeper("y", needs=["x", "a"])],
                       headers=bearer(BUILD))
        assert r.status_code == 201, r.text
        admin = bearer(ADMIN)
        done = finished_batch(central.url, r.json()["id"], headers=admin)
        jobs = done["jobs"]
        assert {n: j["status"] for n, j in jobs.items()} == {
            "a": "succeeded", "b": "succeeded", "x": "failed", "y": "skipped"}, \
            (tmp_path / "worker.log").read_text()[-3000:]
        assert jobs["y"]["reason"] == "needs 'x', which failed"
        a, b = (build_of(central.url, jobs[n], admin) for n in "ab")
        assert started(b) >= ended(a)
        assert a["Builder"] == b["Builder"] == "far"
        # a and x start together on the two slots, from one context: neither waits for a retry
        assert "cannot run" not in (tmp_path / "worker.log").read_text()
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        redis.stop()


def test_mistry_batch_follows_a_batch_to_its_end_with_the_exit_code(start_server, tmp_path):
    srv = start_server(projects=("hello", "failing"))
    mistry = [sys.executable, "-m", "mistry_client.cli", "batch", "--host", srv.url]
    plan = tmp_path / "batch.json"
    plan.write_text(json.dumps([{"name": "lib", "project": "hello", "params": {"n": "cli"}},
                                {"name": "app", "project": "hello", "needs": ["lib"]},
                                {"name": "bad", "project": "failing"},
                                {"name": "after-bad", "project": "hello", "needs": ["bad"]}]))
    r = subprocess.run([*mistry, str(plan)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # a job failed
    lines = r.stdout.splitlines()
    assert "lib: succeeded" in lines and "app: succeeded" in lines
    assert "bad: failed (exit code 77)" in lines  # the build's own reason
    assert "after-bad: skipped (needs 'bad', which failed)" in lines
    assert lines[-1] == "batch failed"
    # once built, the same batch of good jobs ends at once, with exit 0; --no-wait answers the id
    plan.write_text(json.dumps({"jobs": json.loads(plan.read_text())[:2]}))
    again = subprocess.run([*mistry, "--json", str(plan)], capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "succeeded"
    quick = subprocess.run([*mistry, "--no-wait", "--json", str(plan)], capture_output=True,
                           text=True, timeout=60)
    assert quick.returncode == 0 and set(json.loads(quick.stdout)["jobs"]) == {"lib", "app"}
    # the server's refusal, in one line
    plan.write_text(json.dumps([{"name": "a", "project": "hello", "needs": ["a"]}]))
    refused = subprocess.run([*mistry, str(plan)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "jobs a -> a form a cycle" in refused.stderr
