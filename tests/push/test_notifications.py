"""Push builds' notifications: the pure parts (subjects, bodies, threading headers, the
delivery's retries), then real servers on loopback: a real SMTP server (aiosmtpd) receiving the
threaded mails, an HTTP receiver for Apprise's `json://`, a silenced build, a cancelled queued
build, a timed-out one, and a notifier that is down, counted in /metrics of a `mistryd` whose
builds run in a builder process."""

from __future__ import annotations

import email
import re
import threading
import time

import pytest
import requests
from aiosmtpd.controller import Controller
from http_receiver import Receiver
from push_builds import finished
from support import free_port, make_setup, wait_for

from mistryd.errors import ConfigError
from mistryd.push.notify import (
    Delivery,
    DeliveryFailed,
    Event,
    body,
    check_urls,
    event_of,
    subject,
    thread_headers,
)

REPO = "example-org/example-repo"
TITLE = f"[mistryd] Building {REPO}"


# --- pure parts --------------------------------------------------------------------------------


def test_subjects_thread_and_the_body_carries_every_field():
    assert subject(REPO, "production", first=True) == f"{TITLE} production"
    assert subject(REPO, "production", first=False) == f"Re: {TITLE} production"
    text = body(Event("failed", "abc", REPO, "master", "c0ffee", "docs", "http://h/job/p/abc",
                      exit_code=3, duration=2.25))
    assert text.splitlines()[0] == f"Build of {REPO} master failed"
    for line in ("repository: example-org/example-repo", "branch: master", "commit: c0ffee",
                 "task: docs", "outcome: failed", "exit code: 3", "duration: 2.2s",
                 "build: http://h/job/p/abc"):
        assert line in text.splitlines()
    started = body(Event("started", "abc", REPO, "master", "c0ffee", "", "u"))
    assert "outcome: running" in started and "exit code: -" in started and "task: -" in started
    assert thread_headers("abc", first=True) == {"References": "<mistryd-build-abc@mistryd>"}
    assert thread_headers("abc", first=False) == {"References": "<mistryd-build-abc@mistryd>",
                                                  "In-Reply-To": "<mistryd-build-abc@mistryd>"}
    assert [event_of(s) for s in ("succeeded", "failed", "timed-out", "cancelled", "abandoned")] \
        == ["succeeded", "failed", "timed out", "cancelled", "failed"]


def test_unknown_apprise_urls_are_refused_at_start():
    check_urls("notify", ("json://127.0.0.1:1/hook", "mailto://u:p@smtp.example.com?to=a@b.org"))
    with pytest.raises(ConfigError, match=r"config: repositories.x.notify: nonsense://\.\.\. is not"):
        check_urls("repositories.x.notify", ("nonsense://whatever",))


def test_delivery_retries_with_backoff_and_counts_every_outcome():
    counts: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def count(kind, outcome):
        with lock:
            counts[kind, outcome] = counts.get((kind, outcome), 0) + 1

    delivery = Delivery(count, tries=3, backoff=0.05)
    calls = {"flaky": [], "down": [], "refused": []}

    def flaky():
        calls["flaky"].append(time.monotonic())
        if len(calls["flaky"]) < 3:
            raise OSError("connection refused")

    def down():
        calls["down"].append(time.monotonic())
        raise DeliveryFailed("HTTP 503")

    def refused():
        calls["refused"].append(time.monotonic())
        raise DeliveryFailed("HTTP 401", final=True)

    t = time.monotonic()
    for name, attempt in (("flaky", flaky), ("down", down), ("refused", refused)):
        delivery.submit("notification", name, attempt)
    assert time.monotonic() - t < 0.5  # submitting never waits for a delivery
    assert delivery.idle(10)
    assert len(calls["flaky"]) == 3 and len(calls["down"]) == 3 and len(calls["refused"]) == 1
    gaps = [b - a for a, b in zip(calls["down"], calls["down"][1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.15  # backoff: 0.05, then x3
    assert counts == {("notification", "sent"): 1, ("notification", "retried"): 4,
                      ("notification", "failed"): 2}


def test_one_builds_items_keep_their_order_through_retries():
    sent: list[str] = []
    delivery = Delivery(lambda kind, outcome: None, tries=3, backoff=0.1)
    failures = iter([OSError("down")])

    def started():
        if (e := next(failures, None)) is not None:
            raise e
        sent.append("started")

    delivery.submit("status", "forge", started, order="build-1 status")
    delivery.submit("status", "forge", lambda: sent.append("succeeded"), order="build-1 status")
    delivery.submit("status", "forge", lambda: sent.append("other build"), order="build-2 status")
    assert delivery.idle(10)
    assert sent == ["other build", "started", "succeeded"]


# --- real servers ------------------------------------------------------------------------------


class Mailbox:
    """What a real SMTP server (aiosmtpd) on 127.0.0.1 received."""

    def __init__(self):
        self.mails: list[email.message.Message] = []
        self.changed = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        with self.changed:
            self.mails.append(email.message_from_bytes(envelope.content))
            self.changed.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 60) -> list[email.message.Message]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.mails) >= count, timeout), self.mails
            return list(self.mails[:count])


@pytest.fixture
def mailbox():
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    box.url = f"mailto://127.0.0.1:{port}?from=mistryd@example.org&to=ops@example.org"
    yield box
    controller.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _post(url: str, **payload) -> dict:
    r = requests.post(f"{url}/", json={"scm": "git", "project": REPO, **payload}, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()


def _fields(message: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in message.splitlines() if ": " in line)


def test_events_are_mailed_in_a_thread_and_posted_as_json(start_server, git_server, mailbox,
                                                          receiver):
    repo = git_server()
    good = repo.commit({"a.txt": "1\n"}, branch="production")
    bad = repo.commit({"a.txt": "2\n"}, branch="broken")
    srv = start_server(projects=("hello",), notify=[mailbox.url], repositories={REPO: {
        "url": repo.url, "project": "hello", "notify": [f"json://{receiver.url[7:]}/hook"],
        "branches": {"production": "echo built", "broken": "echo no; exit 3"}}})

    answer = _post(srv.url, repositoryUrl=repo.url, target="production")
    t = time.monotonic()
    assert finished(answer)["BuildInfo"]["Status"] == "succeeded"
    started, ended = receiver.wait_for(2)
    assert started.path == "/hook" and started.method == "POST"
    assert (started.body["title"], started.body["type"]) == (f"{TITLE} production", "info")
    assert (ended.body["title"], ended.body["type"]) == (f"Re: {TITLE} production", "success")
    fields = _fields(ended.body["message"])
    assert fields["repository"] == REPO and fields["branch"] == "production"
    assert fields["commit"] == good and fields["task"] == "-" and fields["outcome"] == "succeeded"
    assert fields["exit code"] == "0" and fields["build"] == answer["url"]
    assert 0 < float(fields["duration"].rstrip("s")) < time.monotonic() - t + 1
    assert _fields(started.body["message"])["outcome"] == "running"

    first, second = mailbox.wait_for(2)
    assert first["Subject"] == f"{TITLE} production"
    assert second["Subject"] == f"Re: {TITLE} production"
    root = f"<mistryd-build-{answer['id']}@mistryd>"
    assert first["References"] == root and first["In-Reply-To"] is None
    assert second["References"] == root and second["In-Reply-To"] == root
    assert second["To"] == "ops@example.org"
    text = next(part for part in second.walk() if part.get_content_type() == "text/plain") \
        .get_payload(decode=True).decode()
    assert f"commit: {good}" in text and "outcome: succeeded" in text

    answer = _post(srv.url, repositoryUrl=repo.url, target="broken")
    assert finished(answer)["BuildInfo"]["Status"] == "failed"
    ended = receiver.wait_for(4)[3]
    assert (ended.body["title"], ended.body["type"]) == (f"Re: {TITLE} broken", "failure")
    fields = _fields(ended.body["message"])
    assert (fields["commit"], fields["outcome"], fields["exit code"]) == (bad, "failed", "3")
    assert [m["Subject"] for m in mailbox.wait_for(4)[2:]] == [f"{TITLE} broken",
                                                              f"Re: {TITLE} broken"]


def test_silenced_queued_cancelled_and_timed_out_builds(start_server, git_server, receiver):
    repo = git_server()
    repo.commit({"a.txt": "1\n"}, branch="production")
    repo.commit({"a.txt": "2\n"}, branch="slow")
    queued_commit = repo.commit({"a.txt": "3\n"}, branch="staging")
    srv = start_server(projects=("hello",), job_concurrency=1, build_timeout=12,
                       notify=[f"json://{receiver.url[7:]}/hook"], repositories={REPO: {
                           "url": repo.url, "project": "hello",
                           "branches": {"production": "echo quiet", "slow": "sleep 60",
                                        "staging": "echo never"}}})
    counted = srv.server.metrics.notifications

    # "notifications": "none" silences every event of the build (it also builds the image)
    answer = _post(srv.url, repositoryUrl=repo.url, target="production", notifications="none")
    assert finished(answer)["BuildInfo"]["Status"] == "succeeded"
    assert srv.server.push.reports.delivery.idle(30)
    assert receiver.received == []

    # a build that times out, and one cancelled while it waits behind it in the queue
    slow = _post(srv.url, repositoryUrl=repo.url, target="slow")
    assert receiver.wait_for(1)[0].body["title"] == f"{TITLE} slow"  # it runs
    queued = _post(srv.url, repositoryUrl=repo.url, target="staging")
    assert requests.get(queued["url"], headers={"Accept": "application/json"},
                        timeout=30).json()["Status"] == "queued"
    r = requests.post(f"{srv.url}/jobs/hello/{queued['id']}/cancel", timeout=60)
    assert r.status_code == 200, r.text
    cancelled = receiver.wait_for(2)[1]
    assert (cancelled.body["title"], cancelled.body["type"]) == (f"{TITLE} staging", "warning")
    fields = _fields(cancelled.body["message"])
    assert (fields["commit"], fields["outcome"], fields["exit code"]) == \
        (queued_commit, "cancelled", "-")
    assert fields["build"] == queued["url"]

    assert finished(slow)["BuildInfo"]["Status"] == "timed-out"
    timed_out = receiver.wait_for(3)[2]
    assert (timed_out.body["title"], timed_out.body["type"]) == (f"Re: {TITLE} slow", "failure")
    assert _fields(timed_out.body["message"])["outcome"] == "timed out"
    assert srv.server.push.reports.delivery.idle(30) and len(receiver.received) == 3
    assert counted.labels("notification", "sent")._value.get() == 3


def _metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=30).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_notifier_that_is_down_changes_nothing_and_is_counted(tmp_path, docker_engine,
                                                                 git_server):
    repo = git_server()
    commit = repo.commit({"a.txt": "1\n"}, branch="production")
    down = free_port()  # nothing listens there
    setup = make_setup(tmp_path, ("hello",), job_concurrency=1, builder_processes=1,
                       notify=[f"json://127.0.0.1:{down}/hook"],
                       repositories={REPO: {"url": repo.url, "project": "hello",
                                            "branches": {"production": "echo built"}}})
    proc = setup.start()
    try:
        answer = _post(setup.url, repositoryUrl=repo.url, target="production", commit=commit)
        info = finished(answer)["BuildInfo"]
        assert info["Status"] == "succeeded" and info["ExitCode"] == 0
        # both events were tried 3 times (1 s, then 3 s apart), in the builder process, and
        # the serving process's /metrics shows it
        failed = 'mistryd_notifications_total{kind="notification",outcome="failed"}'
        wait_for(lambda: _metric(setup.url, failed) == 2, timeout=60)
        retried = 'mistryd_notifications_total{kind="notification",outcome="retried"}'
        assert _metric(setup.url, retried) == 4
        log = (tmp_path / "mistryd.log").read_text()
        assert "notification to json://127.0.0.1" in log and "failed for good after 3" in log
        # the build is answered from cache as before
        again = _post(setup.url, repositoryUrl=repo.url, target="production", commit=commit)
        assert again["id"] == answer["id"] and again["cached"] is True
    finally:
        proc.terminate()
        proc.wait(30)
