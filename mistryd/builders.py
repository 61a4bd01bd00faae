"""A builder process: where builds run when they do not run in the serving process.

mistryd's supervisor (mistryd/supervisor.py) forks `builder_processes` of them. Each is a Server
whose scheduler has `job_concurrency` workers and no HTTP: it takes jobs from the queue under
leases, heartbeats and finishes them (docs/queue.md); waiters, log followers and cancels in the API
workers reach it through the queue. One of them also collects garbage every `gc_interval`. A
builder that dies is replaced by the supervisor, which removes its containers and queues its jobs
again at once, so they run again on a builder that lives.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from .config import Config


def builder_prefix(config: Config, pid: int) -> str:
    """The name every lease of the builder process `pid` starts with (its workers add `-<n>`).
    With a shared queue it names this machine too (`<name>.<pid>-`), as builders elsewhere
    share the queue."""
    return f"{local_builders(config)}{pid}-"


def local_builders(config: Config) -> str:
    """What the names of every lease of this machine's builder processes start with."""
    return "builder-" if config.queue is None else f"{config.name}."


def run_builder(config: Config, collect: bool, remove_orphans: bool) -> int:
    """The builder's life, until SIGTERM: then no new job is taken, running builds get
    `shutdown_grace` seconds and are then cancelled and recorded."""
    from .server import Server

    name_process_logs("builder")
    server = Server(config, builder_name=builder_prefix(config, os.getpid()).rstrip("-"))
    if remove_orphans:
        server.runner.remove_orphans_first()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C on the terminal is the supervisor's
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.start_building(collect=collect)
    while not stopping.wait(1):
        pass
    server.stop()
    return 0


def name_process_logs(kind: str) -> None:
    """This process's log lines say which process wrote them: `[builder 1234] INFO ...`."""
    formatter = logging.Formatter(f"%(asctime)s [{kind} %(process)d] %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
