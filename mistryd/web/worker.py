"""An API worker process: waitress on the listening socket it shares with the other API workers
(the kernel hands each new connection to one of them), the Flask app on a Server that builds
nothing. Hits are answered here; misses, cancels and waits go through the queue to the builders.

Signals from the supervisor (mistryd/supervisor.py): SIGUSR1 refuses new builds (the whole server
is stopping; hits and waiters go on); SIGTERM drains: accept no new connection (the other workers
take them), let the requests in progress finish for up to `shutdown_grace` seconds, then close. A
drain after SIGUSR1 first answers every waiter of a build that has not run ("shutting down").
"""

from __future__ import annotations

import logging
import signal
import socket
import threading

from ..builders import name_process_logs
from ..config import Config
from .capacity import SharedCounts

log = logging.getLogger("mistryd")


def serve(config: Config, listener: socket.socket, request_slots: SharedCounts | None) -> int:
    from ..server import Server
    from . import create_app
    from .http import make_http_server

    name_process_logs("api")
    server = Server(config)
    http = make_http_server(create_app(server, request_slots), config, sock=listener)
    drainer = threading.Thread(target=lambda: _drain(server, http, config.shutdown_grace),
                               name="mistryd-drain", daemon=True)

    def on_term(signum, frame) -> None:
        if not drainer.is_alive() and drainer.ident is None:
            drainer.start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGUSR1, lambda *_: server.scheduler.refuse_new())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C on the terminal is the supervisor's
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    http.run()
    if drainer.ident is not None:
        drainer.join(10)  # the drain closes the server's last sockets: let it end first
    server.stop(0)  # builds nothing: only this process's waiters and the queue's bell end
    return 0


def _drain(server, http, grace: float) -> None:
    from .http import drain_http_server

    try:
        if server.scheduler.closed:  # the server stops: builds that have not run never will
            server.scheduler.stop(0)
        drain_http_server(http, grace)
    except Exception:  # noqa: BLE001 - the process ends anyway; say why it ended early
        log.exception("mistryd: the API process did not drain cleanly")
