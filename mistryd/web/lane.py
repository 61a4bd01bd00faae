"""The hit lane: cache hits answered by waitress's I/O thread itself, where they arrive.

A cached `POST /jobs` is the server's hot path (hits.py: key, one `stat`, bytes made earlier).
Handed to a request thread and Flask like every other request, it paid two thread wake-ups, two
handoffs of the interpreter lock and Flask's request handling: about 0.15 ms of CPU of the 0.25
a hit cost, and one client's hit took 1.6x upstream's Go server (docs/performance.md, session 11).

So the I/O thread answers a request itself when it can tell, without Flask and with a few `stat`s,
that the full way would answer it with a cached build:
- `POST /jobs`, no query string (`?async` and the like go the full way), HTTP/1.1 kept alive, a
  body of at most 64 KiB the API takes (JobRequest), not a rebuild;
- the access checks would let it through without a word (`auth.lets_build_quietly`: no browser
  headers, an allowed Host, a token with role build when tokens are set);
- the project's fingerprint is known without reading a file (`projects.known_fingerprint`), the
  answer is in memory (`HitCache.kept`) and counting the hit writes nothing to disk now
  (`Server.quick_hit`).
Anything else (a miss, an error to explain, a refusal, a browser, a large or changed project, the
first hit of a build) goes the full way, unchanged. The answer is the full way's, byte for byte
but the Date (tests/integration/test_hit_lane.py holds them side by side).
"""

from __future__ import annotations

import json
import logging
import time

from waitress.parser import HTTPRequestParser
from waitress.utilities import build_http_date

from ..errors import MistryError
from ..jobs import JobRequest
from ..server import Server
from .auth import lets_build_quietly

log = logging.getLogger("mistryd")

STATUS = "201 CREATED"  # as Flask words the full way's `Response(status=201)`
MAX_BODY = 64 << 10  # a job request is a few hundred bytes: a larger body is parsed the full way


class HitLane:
    def __init__(self, server: Server, headers: dict[str, str], ident: str):
        self.server = server
        # the full way's headers but the length and date, named as waitress names them
        self._headers = [(_waitress_name(k), v) for k, v in {
            **headers, "Content-Type": "application/json", "Server": ident}.items()]
        self._date = ("", 0)  # (the Date header's value, for which second)
        self._failed = False

    def answer(self, request: HTTPRequestParser) -> bytes | None:
        """The whole answer to `request` when it is a cache hit the lane may answer; None when
        the full way answers it. Never raises: a failure here is logged once and the full way
        answers."""
        try:
            return self._answer(request)
        except Exception:  # noqa: BLE001 - the I/O thread must go on; the full way answers
            if not self._failed:
                self._failed = True
                log.exception("mistryd: the hit lane failed; requests go the full way")
            return None

    def _answer(self, request: HTTPRequestParser) -> bytes | None:
        path, query = request.path, request.query  # type: ignore[attr-defined]  # set by parsing
        if (request.error or request.command != "POST" or path != "/jobs" or query
                or request.version != "1.1"
                or request.headers.get("CONNECTION", "").lower() == "close"):
            return None
        job_request = _job_request(request)
        if job_request is None or not lets_build_quietly(self.server.config, request.headers,
                                                         job_request.group):
            return None
        hit = self.server.quick_hit(job_request)
        if hit is None:
            return None
        headers = sorted([*self._headers, ("Content-Length", str(len(hit.body))),
                          ("Date", self._http_date())], key=lambda header: header[0])
        head = "\r\n".join([f"HTTP/1.1 {STATUS}", *(f"{k}: {v}" for k, v in headers)])
        return f"{head}\r\n\r\n".encode("latin-1") + hit.body

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[1] != now:
            self._date = (build_http_date(now), now)
        return self._date[0]


def _job_request(request: HTTPRequestParser) -> JobRequest | None:
    """The body as the API reads it; None when it is not one (the full way says why). The body
    stays readable from where it was for the full way."""
    body = request.get_body_stream()
    start = body.tell()
    try:
        raw = body.read(MAX_BODY + 1)
    finally:
        body.seek(start)
    if len(raw) > MAX_BODY:  # not on the I/O thread, which every connection of the process shares
        return None
    try:
        return JobRequest.from_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError, RecursionError, MistryError):
        return None


def _waitress_name(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))
