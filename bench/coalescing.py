"""5. Coalescing: 50 concurrent identical sync requests for a 3 s build. How many builds ran (the
server's own mistry_builds_started counter), and how long after the build ended (StartedAt +
Duration in its BuildInfo) the last waiter had its answer, against the request that started it."""

from __future__ import annotations

import threading
import time
from datetime import datetime

from .harness import Env, nonce
from .stats import Row, Summary

MEASUREMENT = "5 coalescing"
MAX_DELAY_MS = 50.0


def _ask(client, body: dict, barrier: threading.Barrier, answers: list) -> None:
    barrier.wait()
    info = client.post_job(body)
    answers.append((time.time(), info))


def run(env: Env) -> list[Row]:
    clients_n = env.scale.size(50, 5)
    sleep = env.scale.size(3, 1)
    srv = env.server({"sleeper": 0}, "coalescing", http_threads=128)
    srv.build("sleeper", params={"sleep": "0"})  # the image, built once
    clients = [srv.client() for _ in range(clients_n)]
    for c in clients:
        c.conn.connect()
    builds, last, first = [], [], []
    for _ in range(env.scale.reps(5, 1)):
        body = {"project": "sleeper", "params": {"sleep": str(sleep), "n": nonce()}}
        before = srv.metric("mistry_builds_started", project="sleeper")
        answers: list[tuple[float, dict]] = []
        barrier = threading.Barrier(clients_n)

        threads = [threading.Thread(target=_ask, args=(c, body, barrier, answers))
                   for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(answers) != clients_n:
            raise RuntimeError(f"{clients_n - len(answers)} requests got no answer")
        builds.append(srv.metric("mistry_builds_started", project="sleeper") - before)
        originals = [(t, i) for t, i in answers if not i["Coalesced"]]
        info = originals[0][1] if originals else answers[0][1]
        ended = datetime.fromisoformat(info["StartedAt"]).timestamp() + info["Duration"] / 1e9
        last.append((max(t for t, _ in answers) - ended) * 1e3)
        first.append((min(t for t, _ in originals) - ended) * 1e3 if originals else last[-1])
    ran = Row(MEASUREMENT, f"builds run for {clients_n} identical requests", "builds",
              Summary.of(builds), "one build", Summary.of([1.0]), "exactly 1",
              all(b == 1 for b in builds))
    delay = Row(MEASUREMENT, f"last of {clients_n} answers after a {sleep} s build ended", "ms",
                Summary.of(last), "the request that started it", Summary.of(first),
                f"< {MAX_DELAY_MS:g} ms", None)
    delay.met = delay.value.median < MAX_DELAY_MS
    return [ran, delay]
