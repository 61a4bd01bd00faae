"""The WSGI server (waitress) with the settings mistryd needs; used by the CLI and the tests alike."""

from __future__ import annotations

from flask import Flask
from waitress import create_server
from waitress.server import BaseWSGIServer

from ..config import Config


def make_http_server(app: Flask, config: Config, port: int | None = None) -> BaseWSGIServer:
    """A sync build request holds a thread while it waits, so there are many threads; idle
    keep-alive connections must not use up the connection limit (waitress's default is 100)."""
    return create_server(
        app, host=config.host, port=config.port if port is None else port,
        threads=config.http_threads, connection_limit=max(1000, 4 * config.http_threads),
        channel_timeout=3600, cleanup_interval=10, ident="mistryd", clear_untrusted_proxy_headers=True,
    )


def stop_http_server(http: BaseWSGIServer) -> None:
    """Close every socket from inside waitress's own loop thread, so the loop ends by itself
    instead of failing on a descriptor closed under it."""

    def close_all() -> None:
        for channel in list(http._map.values()):
            channel.close()

    http.trigger.pull_trigger(close_all)
    # the request threads end too (a server started and stopped in one process, as the tests
    # do, would otherwise leave http_threads idle threads behind each time)
    http.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
