"""Load generation with `wrk` (C, epoll: it leaves the CPU to the server under test), 8
keep-alive connections; one run's totals and latency distribution come back as a dict."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .harness import sh

SCRIPT = """
wrk.method = %(method)s
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "errors": %%d, '
    .. '"bad_status": %%d, "lat_min_us": %%d, "lat_p50_us": %%d, "lat_p99_us": %%d, '
    .. '"lat_max_us": %%d}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency.min,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def _lua_string(s: str | None) -> str:
    return "nil" if s is None else json.dumps(s)  # a JSON string is a valid Lua string here


def wrk(port: int, path: str, seconds: float, method: str = "GET", body: str | None = None,
        connections: int = 8) -> dict:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (scripts/setup.sh installs it)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(SCRIPT % {"method": _lua_string(method), "body": _lua_string(body)})
        script = f.name
    try:
        out = sh(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                   "--timeout", "10s", "-s", script, f"http://127.0.0.1:{port}{path}"])
    finally:
        Path(script).unlink()
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
            if result["errors"] or result["bad_status"]:
                raise RuntimeError(f"wrk {method} {path}: {result['errors']} socket errors, "
                                   f"{result['bad_status']} bad answers")
            return result
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def cached_job(port: int, project: str, seconds: float) -> dict:
    return wrk(port, "/jobs", seconds, "POST", json.dumps({"project": project}))


def trivial(port: int, seconds: float) -> dict:
    return wrk(port, "/healthz", seconds)
