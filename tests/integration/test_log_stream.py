"""The log stream against the real server: whenever a follower connects (while the build is
queued, while it runs, after it finished, resuming from an offset), it gets every line of the log
from its offset, then exactly one `end` event whose `info` is the JSON job view's BuildInfo for
the same reader, without the log."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from support import ADMIN, BUILD, READ, TOKENS, bearer

from mistry_client.sse import events as sse_events


class Follower:
    """One open log stream, read an event at a time."""

    def __init__(self, url: str, token: str, last_event_id: str | None = None):
        headers = bearer(token)
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url, headers=headers, stream=True, timeout=120)
        assert self.response.status_code == 200, self.response.text
        self.events: list[tuple[str, str | None, str]] = []  # (event, id, data)
        self._events = self._read()

    def _read(self) -> Iterator[tuple[str, str | None, str]]:
        for e in sse_events(self.response.iter_content(chunk_size=None)):
            yield e.event, e.id, e.data

    def until_line(self, text: str) -> None:
        for item in self._events:
            self.events.append(item)
            if item == ("message", item[1], text):
                return
        raise AssertionError(f"the stream ended before the line {text!r}: {self.events}")

    def to_the_end(self) -> Follower:
        self.events.extend(self._events)
        self.response.close()
        return self

    @property
    def lines(self) -> list[str]:
        return [data for event, _, data in self.events if event == "message"]

    @property
    def end(self) -> dict:
        kinds = [event for event, _, _ in self.events]
        assert kinds.count("end") == 1 and kinds[-1] == "end", kinds
        return json.loads(self.events[-1][2])


@pytest.fixture
def server(start_server, signal_dir):
    srv = start_server(projects=("client-waiting", "hello"), tokens=TOKENS, job_concurrency=1,
                       mounts={str(signal_dir): "/signal"})
    yield srv
    (signal_dir / "go").touch()  # never leave a build container waiting


def submit(srv, project: str, params: dict | None = None) -> str:
    r = srv.post_job({"project": project, "params": params or {}}, asynchronous=True,
                     headers=bearer(BUILD))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def json_view(srv, project: str, build_id: str, token: str) -> dict:
    r = requests.get(f"{srv.url}/job/{project}/{build_id}",
                     headers={"Accept": "application/json", **bearer(token)}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def without_log(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "ContainerStdouterr"}


def whole_log(srv, project: str, build_id: str) -> list[str]:
    r = requests.get(f"{srv.url}/job/{project}/{build_id}/out.log", headers=bearer(READ),
                     timeout=30)
    assert r.status_code == 200
    return r.text.splitlines()


def test_every_follower_gets_the_whole_log_then_one_end_with_the_final_info(server, signal_dir,
                                                                        fs_kind):
    # fs_kind: the folder's move from pending/ to ready/ is a subvolume rename on Btrfs
    running = submit(server, "client-waiting")
    queued = submit(server, "hello", {"who": "queued"})  # one worker, held by the first build
    cancelled = submit(server, "hello", {"who": "cancelled"})
    live = Follower(f"{server.url}/log/client-waiting/{running}", READ)
    live_builder = Follower(f"{server.url}/log/client-waiting/{running}", BUILD)
    before_start = Follower(f"{server.url}/log/hello/{queued}", READ)
    before_cancel = Follower(f"{server.url}/log/hello/{cancelled}", READ)

    # the build waits for the signal, so these lines come while it runs
    live.until_line("waiting for the signal")
    live_builder.until_line("waiting for the signal")
    assert json_view(server, "hello", queued, READ)["Status"] == "queued"
    r = requests.post(f"{server.url}/jobs/hello/{cancelled}/cancel", headers=bearer(ADMIN),
                      timeout=30)
    assert r.status_code == 200, r.text
    (signal_dir / "go").touch()
    for follower in (live, live_builder, before_start, before_cancel):
        follower.to_the_end()

    for project, build_id, follower in (("client-waiting", running, live),
                                        ("hello", queued, before_start),
                                        ("hello", cancelled, before_cancel)):
        view = json_view(server, project, build_id, READ)
        assert follower.end == {"status": view["Status"],
                                "exit_code": view["BuildInfo"]["ExitCode"],
                                "info": without_log(view["BuildInfo"])}
        assert follower.lines == (whole_log(server, project, build_id)
                                  if view["Status"] != "cancelled" else [])
    assert live.end["status"] == "succeeded" and "got the signal" in live.lines
    assert before_start.end["status"] == "succeeded" and "param who=queued" in before_start.lines
    assert before_cancel.end["status"] == "cancelled"
    # the host path only for readers who may see it, as in the JSON view
    assert "Path" not in live.end["info"]
    builder_view = json_view(server, "client-waiting", running, BUILD)["BuildInfo"]
    assert "Path" in builder_view and live_builder.end["info"] == without_log(builder_view)
    assert live_builder.lines == live.lines

    # after the finish: from the start, and resumed from an offset
    url = f"{server.url}/log/client-waiting/{running}"
    after = Follower(url, READ).to_the_end()
    assert after.events == live.events
    middle = next(i for i, (_, _, data) in enumerate(live.events)
                  if data == "waiting for the signal")
    resumed = Follower(url, READ, last_event_id=live.events[middle][1]).to_the_end()
    assert resumed.events == live.events[middle + 1:]
    at_the_end = Follower(url, BUILD, last_event_id=live.events[-2][1]).to_the_end()
    assert at_the_end.events == live_builder.events[-1:]
