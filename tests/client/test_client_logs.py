"""The log stream: `mistry logs -f` resumes after a dropped connection without losing or
repeating a line (Last-Event-ID)."""

from __future__ import annotations

from client_helpers import port_of, run_mistry


def test_follow_resumes_after_dropped_connections(start_server, cutting_proxy):
    server = start_server(projects=("client-params",))
    params = {f"p{i:03d}": "x" * 40 for i in range(300)}  # a log of some length
    info = server.build("client-params", params=params)
    log = (server.build_path / "client-params" / "ready" / info["ID"] / "out.log").read_text()
    assert len(log) > 3000, log
    proxy = cutting_proxy(port_of(server.url), cut_after=700, cuts=3)
    r = run_mistry(["logs", "-f", "client-params", info["ID"]], port=proxy.port)
    assert r.returncode == 0, r.stderr
    assert proxy.cuts_done == 3 and proxy.connections >= 4
    assert r.stdout == log
