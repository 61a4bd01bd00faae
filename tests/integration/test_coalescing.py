"""Identical requests in flight share one build, and its outcome."""

import threading
from concurrent.futures import ThreadPoolExecutor


def concurrent_builds(srv, n, body):
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        return srv.post_job(body)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def started(srv, project):
    return srv.server.metrics.builds_started.value(project)


def test_two_identical_requests_one_build_one_coalesced(start_server):
    srv = start_server(projects=("sleeper",))
    responses = concurrent_builds(srv, 2, {"project": "sleeper", "params": {"sleep": "2"}})
    infos = [r.json() for r in responses]
    assert {r.status_code for r in responses} == {201}
    assert sorted(i["Coalesced"] for i in infos) == [False, True]
    assert len({i["ID"] for i in infos}) == 1
    assert started(srv, "sleeper") == 1


def test_twenty_concurrent_identical_requests_run_one_build(start_server):
    srv = start_server(projects=("sleeper",))
    responses = concurrent_builds(srv, 20, {"project": "sleeper", "params": {"sleep": "2"}})
    infos = [r.json() for r in responses]
    assert started(srv, "sleeper") == 1
    assert [i["Coalesced"] for i in infos].count(False) == 1
    assert {i["ExitCode"] for i in infos} == {0}
    assert len({i["StartedAt"] for i in infos}) == 1  # the same build, the same result


def test_a_coalesced_failure_reaches_every_waiter(start_server):
    srv = start_server(projects=("sleeper",))
    body = {"project": "sleeper", "params": {"sleep": "2", "exit": "9"}}
    infos = [r.json() for r in concurrent_builds(srv, 8, body)]
    assert {i["ExitCode"] for i in infos} == {9}
    assert [i["Coalesced"] for i in infos].count(True) == 7
    assert started(srv, "sleeper") == 1


def test_a_coalesced_image_failure_reaches_every_waiter(start_server):
    srv = start_server(projects=("bad-dockerfile",))
    infos = [r.json() for r in concurrent_builds(srv, 5, {"project": "bad-dockerfile"})]
    assert {i["ExitCode"] for i in infos} == {-999}
    assert started(srv, "bad-dockerfile") == 1


def test_coalesced_waiters_hold_no_worker_slot(start_server):
    """With one worker, ten waiters on a running build leave the worker free for other work."""
    srv = start_server(projects=("sleeper", "hello"), job_concurrency=1, job_backlog=5)
    body = {"project": "sleeper", "params": {"sleep": "2"}}
    with ThreadPoolExecutor(12) as pool:
        waiting = [pool.submit(srv.post_job, body) for _ in range(10)]
        other = srv.post_job({"project": "hello"})  # queued behind the one running build only
        assert other.status_code == 201 and other.json()["ExitCode"] == 0
        assert {f.result().json()["ExitCode"] for f in waiting} == {0}
