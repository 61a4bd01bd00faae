"""One push build's part of the run (the builder's JobHooks): the git work on the host into
the group's /data/cache, then the command with `sh -c` in the checkout, with MISTRY_REPOSITORY,
MISTRY_BRANCH, MISTRY_COMMIT and MISTRY_TASK in its environment; every step time-stamped in the
log, and the outcome as its last line."""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..builder import Job, Stopped
from ..config import Config, Repository
from ..docker_runner import ContainerRun
from ..jobs import BuildInfo
from ..store import Status
from .agent import CONTAINER_SOCKET, SshAgent
from .git import CHECKOUT, Checkout, GitEnv, StepStopped, note, ssh_command
from .jobspec import PushSpec
from .record import PushFacts, write
from .reports import BuildReport, Reports

CONTAINER_CHECKOUT = f"/data/cache/{CHECKOUT}"


@dataclass
class PushRun:
    spec: PushSpec
    repository: Repository
    config: Config
    known_hosts: Path
    owner: tuple[int, int] | None
    _home: Path | None = None
    _agent: SshAgent | None = None  # the build's own ssh-agent (when `ssh_key` is set)
    _folder: Path | None = None
    reports: Reports | None = None  # its notifications and commit statuses (None: none)
    _report: BuildReport | None = None
    commit: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return self.repository.url or self.spec.meta.url

    def prepare(self, job: Job, data: Path) -> ContainerRun:
        spec = self.spec
        self.started = time.monotonic()
        self._folder = data.parent  # the build's folder (pending/<id>): push.json goes there
        if (report := self._reporting(job)) is not None:
            report.started()
        task = f" task {spec.task}" if spec.task else ""
        note(job.log, f"push build of {spec.repository} {spec.branch} at {spec.commit or 'its head'}"
                      f"{task} ({spec.meta.trigger or 'push'}){' - dry run' if spec.dry_run else ''}")
        self._home = Path(tempfile.mkdtemp(prefix="mistryd-push-"))
        timeout = job.settings.build_timeout
        self._agent = self._start_agent(job, timeout)
        env = GitEnv(home=self._home, ssh_command=ssh_command(self.known_hosts),
                     agent_socket=str(self._agent.socket) if self._agent else None)
        (data / "cache").mkdir(exist_ok=True)
        checkout = Checkout(work=data / "cache" / CHECKOUT, env=env, log=job.log,
                            cancel=job.cancel, dry_run=spec.dry_run, owner=self.owner,
                            deadline=time.monotonic() + timeout if timeout else None)
        try:
            self.commit = checkout.run(self.url, spec.branch, spec.commit)
        except StepStopped as e:
            raise Stopped(Status.TIMED_OUT if e.timed_out else Status.CANCELLED, e.reason) from None
        if report is not None:
            report.pending(self.commit)
        shown = f"sh -c {shlex.quote(spec.command)}"
        note(job.log, f"{'would run' if spec.dry_run else 'running'}: {shown} in {CONTAINER_CHECKOUT}")
        mounts, agent_env = {}, {}
        if self._agent is not None:
            mounts[str(self._agent.socket)] = CONTAINER_SOCKET
            agent_env["SSH_AUTH_SOCK"] = CONTAINER_SOCKET
        return ContainerRun(command=["sh", "-c", spec.command], working_dir=CONTAINER_CHECKOUT,
                            environment={**self.environment(), **agent_env}, mounts=mounts,
                            dry_run=spec.dry_run)

    def _start_agent(self, job: Job, timeout: int) -> SshAgent | None:
        """The build's own ssh-agent holding `ssh_key`, running as the build's uid (the
        container's command uses it; docs/push.md, "ssh-agent"). None without a key or in a dry
        run (nothing runs). Should it outlive its build, the key expires anyway once the image
        build and the container could both have used up the build's timeout."""
        if self.config.ssh_key is None or self.spec.dry_run:
            return None
        agent = SshAgent.start(self.config.ssh_key, owner=self.owner,
                               lifetime=2 * timeout + 300 if timeout else None)
        note(job.log, f"ssh-agent {agent.pid} holds the deploy key {agent.fingerprint}; "
                      f"the command reaches it at SSH_AUTH_SOCK={CONTAINER_SOCKET}")
        return agent

    def environment(self) -> dict[str, str]:
        return {"MISTRY_REPOSITORY": self.spec.repository, "MISTRY_BRANCH": self.spec.branch,
                "MISTRY_COMMIT": self.commit or self.spec.commit, "MISTRY_TASK": self.spec.task}

    def closing(self, job: Job, info: BuildInfo) -> None:
        if self._folder is not None:  # what the build's page shows (mistryd/push/record.py)
            write(self._folder, PushFacts.of(self.spec, self.commit))
        exit_code = "" if info.ExitCode == -999 else f", exit code {info.ExitCode}"
        note(job.log, f"outcome: {info.Status}{exit_code} after "
                      f"{time.monotonic() - self.started:.1f}s")

    def _reporting(self, job: Job) -> BuildReport | None:
        if self._report is None and self.reports is not None:
            self._report = self.reports.for_build(self.spec, self.repository, job.project, job.id)
        return self._report

    def ended(self, job: Job, info: BuildInfo) -> None:
        if self._agent is not None:
            self._agent.stop()
            self._agent = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
        if (report := self._reporting(job)) is not None:  # only queued: sent in the background
            report.ended(info.Status, info.ExitCode, info.Duration, self.commit)
