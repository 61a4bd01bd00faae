"""A small HTTP server on 127.0.0.1 that records what it is sent: it plays an Apprise `json://`
endpoint and the forges' commit status APIs in the push tests."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict


class Receiver:
    """`answers`: the status codes of the first requests (then 201), to play a flaky server."""

    def __init__(self, answers: tuple[int, ...] = ()):
        self.received: list[Received] = []
        self.answers = list(answers)
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._changed:
                    code = receiver.answers.pop(0) if receiver.answers else 201
                    receiver.received.append(Received(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw or b"{}")))
                    receiver._changed.notify_all()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        """The first `count` requests, waiting for them (an AssertionError when they do not come)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{count} request(s) expected, got {self.received}")
            return list(self.received[:count])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
