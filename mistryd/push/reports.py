"""What a push build tells the world: its events to the Apprise URLs (notify.py) and its commit
status to the forge (statuses.py), both through one Delivery per process, so a build only ever
queues them. A payload's `"notifications": "none"` silences the events; the commit status is the
commit's state on the forge, not a message, and is set whatever the payload asks."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config, Repository
from ..store import Status
from .jobspec import PushSpec
from .notify import NO_EXIT_CODE, STARTED, Count, Delivery, Event, Notifier, check_urls, event_of
from .statuses import StatusTarget, check


class Reports:
    """The process's reporting of push builds (one delivery thread, made on first use)."""

    def __init__(self, config: Config, count: Count):
        self.notify = config.notify
        self.delivery = Delivery(count)

    @staticmethod
    def check(config: Config) -> None:
        """ConfigError for a `notify` URL Apprise cannot send to or a `status_token` without an
        API to send statuses to: found at start, not at a build."""
        check_urls("notify", config.notify)
        for name, repository in config.repositories.items():
            check_urls(f"repositories.{name}.notify", repository.notify)
            check(f"repositories.{name}", repository)

    def for_build(self, spec: PushSpec, repository: Repository | None, project: str,
                  build_id: str) -> BuildReport:
        """`repository` None: no longer configured (only the global `notify` hears of it)."""
        own = repository.notify if repository is not None else ()
        urls = (*self.notify, *own) if spec.meta.notify else ()
        page = f"{spec.meta.page}job/{project}/{build_id}" if spec.meta.page else ""
        status = StatusTarget.of(spec.repository, repository, spec.meta.trigger) \
            if repository is not None else None
        return BuildReport(spec=spec, build_id=build_id, page=page,
                           notifier=Notifier(urls, self.delivery) if urls else None,
                           status=status, delivery=self.delivery)


@dataclass
class BuildReport:
    """One build's events and statuses, in order: started (pending), then how it ended."""

    spec: PushSpec
    build_id: str
    page: str  # the build's page, the link in every message and status
    notifier: Notifier | None
    status: StatusTarget | None
    delivery: Delivery
    _first: bool = field(default=True)  # no mail of this build sent yet: the thread's subject
    _pending_sent: bool = False

    def started(self) -> None:
        self._send(self._event(STARTED, self.spec.commit))

    def pending(self, commit: str) -> None:
        """The forge's pending status, once the commit is known in full (after the checkout)."""
        if self.status is not None and not self._pending_sent:
            self._pending_sent = True
            self._status(commit, None, "mistryd is building it")

    def ended(self, status: str, exit_code: int, duration_ns: int, commit: str = "") -> None:
        kind = event_of(status)
        self._send(self._event(kind, commit or self.spec.commit,
                               None if exit_code == NO_EXIT_CODE else exit_code,
                               duration_ns / 1e9))
        if self.status is not None:
            self._status(commit or self.spec.commit, status, f"the build {kind}")

    def never_ran(self, status: Status) -> None:
        """The build ended before a builder ran it (cancelled in the queue, or refused)."""
        self.ended(status.value, NO_EXIT_CODE, 0)

    def _event(self, kind: str, commit: str, exit_code: int | None = None,
               duration: float | None = None) -> Event:
        spec = self.spec
        return Event(kind=kind, build_id=self.build_id, repository=spec.repository,
                     branch=spec.branch, commit=commit, task=spec.task, url=self.page,
                     exit_code=exit_code, duration=duration)

    def _send(self, event: Event) -> None:
        if self.notifier is not None:
            self.notifier.send(event, self._first)
            self._first = False

    def _status(self, commit: str, status: str | None, description: str) -> None:
        assert self.status is not None
        target = self.status
        self.delivery.submit("status", f"{target.forge} {target.repository}@{commit[:12]}",
                             target.attempt(commit, status, self.page, description, self.spec.task),
                             order=f"{self.build_id} status")
