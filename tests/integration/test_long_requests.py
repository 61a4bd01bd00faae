"""Long requests (sync waits for a build, log followers) hold request threads only up to their
pool: beyond it they are refused 503 with Retry-After, short requests keep being answered, and a
waiter whose client went away lets go of its thread."""

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import requests
from support import wait_for

MISTRY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "mistry"

THREADS = 12  # budget: 5 for waits and followers, 3 for artifacts, 4 kept for the rest


def slots_in_use(srv, kind: str = "waits") -> float:
    text = requests.get(f"{srv.url}/metrics", timeout=10).text
    match = re.search(rf'^mistryd_request_slots_in_use{{kind="{kind}"}} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


def refused(srv, kind: str = "waits") -> float:
    text = requests.get(f"{srv.url}/metrics", timeout=10).text
    match = re.search(rf'^mistryd_request_slots_refused_total{{kind="{kind}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


class Follower:
    """An open log stream, read past its first event (so the server is serving it). The line
    iterator is kept: dropping it would make urllib3 close the connection."""

    def __init__(self, srv, project: str, build_id: str):
        self.response = requests.get(f"{srv.url}/log/{project}/{build_id}", stream=True, timeout=60)
        assert self.response.status_code == 200, self.response.text
        self.lines = self.response.iter_lines()
        assert next(self.lines).startswith(b"retry:")

    def close(self) -> None:
        self.response.close()


def test_long_requests_are_bounded_and_short_ones_still_answer(start_server):
    srv = start_server(projects=("sleeper", "hello"), http_threads=THREADS)
    hit = srv.build("hello")
    body = {"project": "sleeper", "params": {"sleep": "600"}}
    build_id = srv.post_job(body, asynchronous=True).json()["id"]
    followers = [Follower(srv, "sleeper", build_id) for _ in range(5)]
    try:
        assert slots_in_use(srv) == 5
        # the sixth long request of either kind is refused at once, and says what to do
        extra = requests.get(f"{srv.url}/log/sleeper/{build_id}", stream=True, timeout=30)
        assert extra.status_code == 503 and int(extra.headers["Retry-After"]) > 0
        assert "following logs (5 at once)" in extra.json()["error"]
        waiter = srv.post_job(body, timeout=30)
        assert waiter.status_code == 503 and int(waiter.headers["Retry-After"]) > 0
        assert (f"Build sleeper/{build_id} is accepted and goes on: follow it at "
                f"/log/sleeper/{build_id}") in waiter.json()["error"]
        assert refused(srv) >= 2
        # the client waits as told (Retry-After) and follows once a slot is free
        env = {**os.environ, "MISTRY_HOST": "127.0.0.1", "MISTRY_PORT": srv.url.rsplit(":", 1)[1]}
        client = subprocess.Popen([str(MISTRY), "logs", "-f", "sleeper", build_id], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: refused(srv) >= 3, timeout=60)
        followers.pop().close()
        wait_for(lambda: slots_in_use(srv) == 5, timeout=60)  # the client took the free slot
        # short requests are answered all the while
        assert requests.get(f"{srv.url}/healthz", timeout=10).text == "ok\n"
        again = srv.post_job({"project": "hello"}, timeout=30)
        assert again.status_code == 201 and again.json()["ID"] == hit["ID"] and again.json()["Cached"]
        assert requests.get(f"{srv.url}/", headers={"Accept": "text/html"}, timeout=10).ok

        # followers that go away give their slots back
        for r in followers[:2]:
            r.close()
        followers = followers[2:]
        wait_for(lambda: slots_in_use(srv) == 3, timeout=60)  # 2 followers and the client

        # so does a sync waiter whose client hangs up
        with socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1]))) as s:
            payload = json.dumps(body).encode()
            s.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            wait_for(lambda: slots_in_use(srv) == 4, timeout=60)
        wait_for(lambda: slots_in_use(srv) == 3, timeout=60)
        assert srv.server.scheduler.in_flight("sleeper", build_id) is not None  # the build goes on
    finally:
        requests.post(f"{srv.url}/jobs/sleeper/{build_id}/cancel", timeout=60)
        for r in followers:
            r.close()
    out, err = client.communicate(timeout=60)
    assert "sleeping 600" in out and "Traceback" not in err, (out, err)
    wait_for(lambda: slots_in_use(srv) == 0, timeout=60)
