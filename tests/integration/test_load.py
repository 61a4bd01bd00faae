"""200 concurrent clients for 20 s mixing cache hits, new builds and bad requests against the
real `mistryd` command: no 5xx but the backlog's 503s, and every accepted job ends well."""

import random
import threading
import time
from collections import Counter

import pytest
import requests
from support import make_setup, wait_for

pytestmark = pytest.mark.docker  # real builds in mistryd processes

CLIENTS = 200
SECONDS = 20


def test_200_clients_for_20_seconds(tmp_path, docker_engine):
    setup = make_setup(tmp_path, ("hello",), job_concurrency=2, job_backlog=8, http_threads=256)
    url = setup.url
    proc = setup.start()
    statuses: Counter = Counter()
    unexpected: list = []
    accepted: set[str] = set()
    lock = threading.Lock()
    deadline = time.monotonic() + SECONDS
    try:
        assert requests.post(f"{url}/jobs", json={"project": "hello"}, timeout=60).ok  # warm

        def client(n: int) -> None:
            rnd = random.Random(n)
            session = requests.Session()
            while time.monotonic() < deadline:
                kind = rnd.choices(["hit", "new", "bad"], weights=[6, 2, 2])[0]
                if kind == "hit":
                    r = session.post(f"{url}/jobs", json={"project": "hello"}, timeout=120)
                    ok = r.status_code == 201 and r.json()["Cached"]
                elif kind == "new":
                    body = {"project": "hello", "params": {"n": str(rnd.randrange(10**9))}}
                    r = session.post(f"{url}/jobs?async", json=body, timeout=120)
                    ok = r.status_code in (201, 503)
                    if r.status_code == 201:
                        with lock:
                            accepted.add(r.json()["id"])
                else:
                    body = rnd.choice(['{"project": "../x"}', "{oops", '{"project": "nope"}',
                                       '{"project": "hello", "params": {"a": 1}}'])
                    r = session.post(f"{url}/jobs", data=body, timeout=120)
                    ok = r.status_code in (400, 404) and "error" in r.json()
                with lock:
                    statuses[(kind, r.status_code)] += 1
                    if not ok:
                        unexpected.append((kind, r.status_code, r.text[:200]))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert unexpected == []
        assert not any(code >= 500 and code != 503 for _, code in statuses)
        assert statuses[("hit", 201)] > 0 and accepted
        # every accepted job ends, and ends well
        def all_done() -> bool:
            rows = requests.get(f"{url}/index/", timeout=30).json()
            done = {r["id"]: r["status"] for r in rows if r["id"] in accepted}
            return len(done) == len(accepted) and all(s != "queued" and s != "running"
                                                      for s in done.values())
        wait_for(all_done, timeout=300, interval=1)
        rows = requests.get(f"{url}/index/", timeout=30).json()
        assert {r["status"] for r in rows if r["id"] in accepted} == {"succeeded"}
    finally:
        proc.terminate()
        proc.wait(60)
