"""A push build's notifications (docs/push.md, "Notifications"): its events (started,
succeeded, failed, timed out, cancelled) as messages to the Apprise URLs of the global `notify`
and the repository's own, with one build's mails threaded; and the Delivery that every
notification and commit status goes through: a background thread with bounded retries, so a
notifier that fails never changes a build's outcome nor delays its answer."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import apprise
from apprise.plugins.email import NotifyEmail

from ..errors import ConfigError
from ..store import Status

log = logging.getLogger("mistryd.push")

STARTED = "started"
# a build's end state -> its event; whatever else a build ends as (abandoned) is a failure
ENDED = {Status.SUCCEEDED: "succeeded", Status.FAILED: "failed", Status.TIMED_OUT: "timed out",
         Status.CANCELLED: "cancelled", Status.SUPERSEDED: "cancelled"}
APPRISE_TYPE = {STARTED: apprise.NotifyType.INFO, "succeeded": apprise.NotifyType.SUCCESS,
                "failed": apprise.NotifyType.FAILURE, "timed out": apprise.NotifyType.FAILURE,
                "cancelled": apprise.NotifyType.WARNING}
NO_EXIT_CODE = -999  # BuildInfo's ExitCode when no container ran


def event_of(status: str) -> str:
    try:
        return ENDED.get(Status(status), "failed")
    except ValueError:
        return "failed"


@dataclass(frozen=True)
class Event:
    """What one notification tells: the build, and how far it got."""

    kind: str  # started, succeeded, failed, timed out, cancelled
    build_id: str
    repository: str
    branch: str
    commit: str
    task: str
    url: str  # the build's page
    exit_code: int | None = None
    duration: float | None = None  # seconds

    @property
    def outcome(self) -> str:
        return "running" if self.kind == STARTED else self.kind


def subject(repository: str, branch: str, first: bool) -> str:
    """All mails of one build share a subject (`Re: ` after the first), so they thread."""
    title = f"[mistryd] Building {repository} {branch}"
    return title if first else f"Re: {title}"


def body(event: Event) -> str:
    head = (f"Build of {event.repository} {event.branch} started" if event.kind == STARTED
            else f"Build of {event.repository} {event.branch} {event.kind}")
    fields = [("repository", event.repository), ("branch", event.branch),
              ("commit", event.commit), ("task", event.task or "-"), ("outcome", event.outcome),
              ("exit code", "-" if event.exit_code is None else str(event.exit_code)),
              ("duration", "-" if event.duration is None else f"{event.duration:.1f}s"),
              ("build", event.url or "-")]
    return "\n".join([head, "", *(f"{name}: {value}" for name, value in fields)])


def thread_headers(build_id: str, first: bool) -> dict[str, str]:
    """Mail headers that thread one build's mails. Apprise gives every mail a Message-ID of its
    own making, so the thread hangs on an id of the build's that no mail carries: every mail
    names it in References, the later ones in In-Reply-To too (mail clients group messages
    under a common missing parent)."""
    root = f"<mistryd-build-{build_id}@mistryd>"
    return {"References": root} if first else {"References": root, "In-Reply-To": root}


def check_urls(key: str, urls: tuple[str, ...]) -> None:
    """ConfigError for a `notify` entry Apprise does not understand (at start, not at the first
    build)."""
    for url in urls:
        if apprise.Apprise.instantiate(url) is None:
            raise ConfigError(key, f"{url.split('://', 1)[0]}://... is not an Apprise URL this "
                                   "server can send to (see https://github.com/caronc/apprise/wiki)")


class DeliveryFailed(Exception):
    """One attempt failed; `final` when trying again cannot help (a refused token)."""

    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.message, self.final = message, final


Count = Callable[[str, str], None]  # (kind, outcome) -> the counter in /metrics


@dataclass(order=True)
class _Item:
    due: float
    seq: int
    kind: str = field(compare=False)
    name: str = field(compare=False)
    attempt: Callable[[], None] = field(compare=False)
    order: str = field(compare=False)
    tries: int = field(default=0, compare=False)


class Delivery:
    """Sends in a background thread of its own, tries each item up to `tries` times with
    backoff (`backoff`, then x3), logs and counts every outcome. Items of one `order` key (one
    build's messages to one URL, one build's statuses) go one after the other, so a retried
    "started" never lands after its build's end. `submit` never blocks and never raises. Items
    still pending when the process ends are lost."""

    def __init__(self, count: Count, tries: int = 3, backoff: float = 1.0):
        self.count, self.tries, self.backoff = count, tries, backoff
        self._heap: list[_Item] = []  # the items due, the first of each order key
        self._waiting: dict[str, deque[_Item]] = {}  # order key -> the items behind its first
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._busy = 0
        self._pid = 0  # the process whose thread delivers (a forked child starts its own)

    def submit(self, kind: str, name: str, attempt: Callable[[], None], order: str = "") -> None:
        """`attempt` sends once and raises DeliveryFailed (or anything) when it did not."""
        with self._wake:
            self._ensure_thread()
            item = _Item(time.monotonic(), next(self._seq), kind, name, attempt,
                         order or f"item-{next(self._seq)}")
            if item.order in self._waiting:
                self._waiting[item.order].append(item)
                return
            self._waiting[item.order] = deque()
            heapq.heappush(self._heap, item)
            self._wake.notify()

    def idle(self, timeout: float) -> bool:
        """Wait until nothing is pending (tests, a clean stop). False on timeout."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._waiting and not self._busy, timeout)

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(target=self._loop, name="mistryd-notify", daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0].due > time.monotonic():
                    self._wake.wait(self._heap[0].due - time.monotonic() if self._heap else None)
                item = heapq.heappop(self._heap)
                self._busy += 1
            done = True
            try:
                done = self._try(item)
            finally:
                with self._wake:
                    self._busy -= 1
                    if not done:
                        item.due = time.monotonic() + self.backoff * 3 ** (item.tries - 1)
                        heapq.heappush(self._heap, item)
                    elif self._waiting[item.order]:  # the next of its order key is due now
                        following = self._waiting[item.order].popleft()
                        following.due = time.monotonic()
                        heapq.heappush(self._heap, following)
                    else:
                        del self._waiting[item.order]
                    self._wake.notify_all()

    def _try(self, item: _Item) -> bool:
        """One attempt; False when the item is to be tried again."""
        item.tries += 1
        try:
            item.attempt()
        except Exception as e:  # noqa: BLE001 - a notifier's failure never reaches a build
            message = e.message if isinstance(e, DeliveryFailed) else f"{type(e).__name__}: {e}"
            if (isinstance(e, DeliveryFailed) and e.final) or item.tries >= self.tries:
                log.warning("mistryd: %s to %s failed for good after %d attempt(s): %s",
                            item.kind, item.name, item.tries, message)
                self.count(item.kind, "failed")
                return True
            log.info("mistryd: %s to %s failed (attempt %d of %d), trying again in %.0fs: %s",
                     item.kind, item.name, item.tries, self.tries,
                     self.backoff * 3 ** (item.tries - 1), message)
            self.count(item.kind, "retried")
            return False
        self.count(item.kind, "sent")
        return True


class Notifier:
    """A build's events to its Apprise URLs, each URL on its own (one that fails is retried
    alone)."""

    def __init__(self, urls: tuple[str, ...], delivery: Delivery):
        self.urls, self.delivery = urls, delivery

    def send(self, event: Event, first: bool) -> None:
        title = subject(event.repository, event.branch, first)
        text = body(event)
        for url in self.urls:
            self.delivery.submit("notification", _shown(url),
                                 _apprise_attempt(url, title, text, APPRISE_TYPE[event.kind],
                                                  thread_headers(event.build_id, first)),
                                 order=f"{event.build_id} {url}")


def _shown(url: str) -> str:
    """An Apprise URL without its secrets, for the log."""
    plugin = apprise.Apprise.instantiate(url)
    return plugin.url(privacy=True) if plugin is not None else url.split("://", 1)[0] + "://..."


def _apprise_attempt(url: str, title: str, text: str, kind: str,
                     headers: dict[str, str]) -> Callable[[], None]:
    def attempt() -> None:
        sender = apprise.Apprise()
        if not sender.add(url):
            raise DeliveryFailed("not an Apprise URL", final=True)
        if isinstance(sender[0], NotifyEmail):
            sender[0].headers.update(headers)
        # through Apprise (not the plugin) so the plain text becomes each service's format
        if not sender.notify(body=text, title=title, notify_type=kind,
                             body_format=apprise.NotifyFormat.TEXT):
            raise DeliveryFailed("Apprise could not deliver it (its reason is in the log above)")
    return attempt
