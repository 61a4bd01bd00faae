"""The HTTP API around the builds: async submit, index, job page, log stream, metrics, limits."""

import threading
import time

import requests

from mistry_client.sse import events as sse_events


def wait_until(predicate, timeout=30.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def job_json(srv, project, build_id):
    return requests.get(f"{srv.url}/job/{project}/{build_id}",
                        headers={"Accept": "application/json"}, timeout=10)


def test_async_submit_answers_at_once_with_id_and_url(start_server):
    srv = start_server(projects=("sleeper",))
    started = time.monotonic()
    r = srv.post_job({"project": "sleeper", "params": {"sleep": "2"}}, asynchronous=True)
    assert time.monotonic() - started < 1.5
    assert r.status_code == 201
    body = r.json()
    assert body["url"] == f"job/sleeper/{body['id']}" and not body["cached"]
    assert job_json(srv, "sleeper", body["id"]).json()["State"] == "pending"
    # the job appears, and ends ready
    done = wait_until(lambda: job_json(srv, "sleeper", body["id"]).json()["State"] == "ready")
    assert done
    view = job_json(srv, "sleeper", body["id"]).json()
    assert view["BuildInfo"]["ExitCode"] == 0 and view["Status"] == "succeeded"
    index = requests.get(f"{srv.url}/index/", timeout=10).json()
    assert index[0]["id"] == body["id"] and index[0]["state"] == "ready"
    assert index[0]["project"] == "sleeper" and index[0]["buildInfo"]["ExitCode"] == 0


def test_job_page_json_and_html(start_server):
    srv = start_server()
    info = srv.build("hello", params={"who": "<script>alert(1)</script>"})
    view = job_json(srv, "hello", info["ID"]).json()
    assert view["ID"] == info["ID"] and view["Project"] == "hello" and view["State"] == "ready"
    assert view["BuildInfo"]["ContainerStdouterr"] == info["ContainerStdouterr"]
    by_content_type = requests.get(f"{srv.url}/job/hello/{info['ID']}",
                                   headers={"Content-Type": "application/json"}, timeout=10)
    assert by_content_type.json()["ID"] == info["ID"]
    html = requests.get(f"{srv.url}/job/hello/{info['ID']}", timeout=10)
    assert html.headers["Content-Type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in html.text
    assert "&lt;script&gt;" in html.text
    assert job_json(srv, "hello", "0" * 64).status_code == 404


def read_sse(response):
    """[(event, id, data)] of a whole SSE stream (read with the client's parser)."""
    return [(e.event, e.id, e.data) for e in sse_events(response.iter_content(chunk_size=None))]


def test_log_stream_from_the_start_live_resumable_and_ended(start_server):
    srv = start_server(projects=("sleeper",))
    body = srv.post_job({"project": "sleeper", "params": {"sleep": "2"}}, asynchronous=True).json()
    url = f"{srv.url}/log/sleeper/{body['id']}"
    with requests.get(url, stream=True, timeout=60) as live:
        assert live.headers["Content-Type"].startswith("text/event-stream")
        events = read_sse(live)
    lines = [d for e, _, d in events if e == "message"]
    assert lines[0].startswith("mistryd: ")  # from the very first line
    assert "sleeping 2" in lines and "slept" in lines
    assert events[-1][0] == "end" and '"status": "succeeded"' in events[-1][2]
    # a finished build replays and ends; Last-Event-ID resumes after that line
    middle = next(i for i, (e, _, d) in enumerate(events) if d == "sleeping 2")
    resumed = read_sse(requests.get(url, headers={"Last-Event-ID": events[middle][1]},
                                    stream=True, timeout=30))
    assert [d for e, _, d in resumed if e == "message"] == lines[middle + 1:]
    assert resumed[-1][0] == "end"
    assert requests.get(url, headers={"Last-Event-ID": "x"}, timeout=10).status_code == 400
    assert requests.get(f"{srv.url}/log/sleeper/{'0' * 64}", timeout=10).status_code == 404


def test_metrics_have_upstream_names(start_server):
    srv = start_server()
    srv.build("hello")
    srv.build("hello")
    text = requests.get(f"{srv.url}/metrics", timeout=10).text
    assert 'mistry_builds_started{project="hello"} 1.0' in text
    assert 'mistry_builds_finished{project="hello"} 1.0' in text
    assert 'mistry_cache_utilization{project="hello"} 1.0' in text
    for name in ("mistry_builds_hosted", "mistry_builds_coalesced",
                 "mistry_builds_processed_incrementally", "mistry_builds_succeeded_seconds",
                 "mistry_builds_failed_seconds"):
        assert f"# TYPE {name} " in text, name


def test_backlog_limit_answers_503_with_retry_after(start_server):
    srv = start_server(projects=("sleeper",), job_concurrency=1, job_backlog=1)
    first = srv.post_job({"project": "sleeper", "params": {"sleep": "3"}}, asynchronous=True)
    assert first.status_code == 201
    wait_until(lambda: srv.server.scheduler.in_flight("sleeper", first.json()["id"]).running)
    second = srv.post_job({"project": "sleeper", "params": {"sleep": "1"}}, asynchronous=True)
    assert second.status_code == 201
    third = srv.post_job({"project": "sleeper", "params": {"sleep": "0"}})
    assert third.status_code == 503
    assert third.json() == {"error": "Server is overloaded; try again later"}
    assert int(third.headers["Retry-After"]) > 0
    # joining a build already in flight needs no room in the backlog
    joined = srv.post_job({"project": "sleeper", "params": {"sleep": "1"}}, asynchronous=True)
    assert joined.status_code == 201


def test_concurrency_limit(start_server):
    srv = start_server(projects=("sleeper",), job_concurrency=1, job_backlog=10)
    peak = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak.append(sum(f.running for f in srv.server.scheduler.flights()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    ids = [srv.post_job({"project": "sleeper", "params": {"sleep": "1", "n": str(i)}},
                        asynchronous=True).json()["id"] for i in range(3)]
    wait_until(lambda: all(job_json(srv, "sleeper", i).json()["State"] == "ready" for i in ids))
    stop.set()
    watcher.join()
    assert max(peak) == 1


def test_log_offsets_past_the_end_or_malformed_are_400(start_server):
    srv = start_server()
    info = srv.build("hello")
    url = f"{srv.url}/log/hello/{info['ID']}"
    for bad in ("20000000000000", "99999999999999999999", "\u00b2", "-1", "1e3"):
        r = requests.get(url, headers={"Last-Event-ID": bad.encode("utf-8")}, timeout=10)
        assert r.status_code == 400, bad
        assert "error" in r.json()
    size = len(info["ContainerStdouterr"].encode())
    end = read_sse(requests.get(url, params={"offset": str(size)}, stream=True, timeout=10))
    assert [e for e, _, _ in end] == ["end"]


def test_a_stopped_server_leaves_no_threads_behind(start_server):
    before = threading.active_count()
    srv = start_server()
    srv.build("hello")
    srv.stop()
    assert threading.active_count() <= before + 1  # at most a thread that is just ending
