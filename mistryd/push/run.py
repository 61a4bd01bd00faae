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
from .git import CHECKOUT, Checkout, GitEnv, StepStopped, note, ssh_command
from .jobspec import PushSpec

CONTAINER_CHECKOUT = f"/data/cache/{CHECKOUT}"


@dataclass
class PushRun:
    spec: PushSpec
    repository: Repository
    config: Config
    known_hosts: Path
    owner: tuple[int, int] | None
    _home: Path | None = None
    commit: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return self.repository.url or self.spec.meta.url

    def prepare(self, job: Job, data: Path) -> ContainerRun:
        spec = self.spec
        self.started = time.monotonic()
        task = f" task {spec.task}" if spec.task else ""
        note(job.log, f"push build of {spec.repository} {spec.branch} at {spec.commit or 'its head'}"
                      f"{task} ({spec.meta.trigger or 'push'}){' - dry run' if spec.dry_run else ''}")
        self._home = Path(tempfile.mkdtemp(prefix="mistryd-push-"))
        env = GitEnv(home=self._home, ssh_command=ssh_command(self.known_hosts, self.config.ssh_key))
        timeout = job.settings.build_timeout
        (data / "cache").mkdir(exist_ok=True)
        checkout = Checkout(work=data / "cache" / CHECKOUT, env=env, log=job.log,
                            cancel=job.cancel, dry_run=spec.dry_run, owner=self.owner,
                            deadline=time.monotonic() + timeout if timeout else None)
        try:
            self.commit = checkout.run(self.url, spec.branch, spec.commit)
        except StepStopped as e:
            raise Stopped(Status.TIMED_OUT if e.timed_out else Status.CANCELLED, e.reason) from None
        shown = f"sh -c {shlex.quote(spec.command)}"
        note(job.log, f"{'would run' if spec.dry_run else 'running'}: {shown} in {CONTAINER_CHECKOUT}")
        return ContainerRun(command=["sh", "-c", spec.command], working_dir=CONTAINER_CHECKOUT,
                            environment=self.environment(), dry_run=spec.dry_run)

    def environment(self) -> dict[str, str]:
        return {"MISTRY_REPOSITORY": self.spec.repository, "MISTRY_BRANCH": self.spec.branch,
                "MISTRY_COMMIT": self.commit or self.spec.commit, "MISTRY_TASK": self.spec.task}

    def closing(self, job: Job, info: BuildInfo) -> None:
        exit_code = "" if info.ExitCode == -999 else f", exit code {info.ExitCode}"
        note(job.log, f"outcome: {info.Status}{exit_code} after "
                      f"{time.monotonic() - self.started:.1f}s")

    def ended(self, job: Job, info: BuildInfo) -> None:
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
