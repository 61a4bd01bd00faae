"""`mistryd worker`: a builder on another machine (docs/distributed.md).

It needs Docker, a build_path and two addresses: the shared queue (Redis) and the central server
(HTTP). It takes jobs from the queue under a lease (renewed by heartbeats: a cancel reaches it
there), asks the central server for each job's details and build context, builds with the same
Builder as the central server into its own build_path, ships the live log to the central server
as it is written, and uploads the finished build folder, which the central server checks, lands
in its ready/ and finishes in the queue under this builder's lease. Its own ready/ keeps what it
built last per group (the cache of the group's next build, when it comes here again: cache
locality); a group's last cache it does not hold is fetched from the central server first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from ..builder import Builder, Job
from ..config import Config, ProjectSettings, from_dict
from ..coordinator import settings_key
from ..docker_runner import DockerRunner
from ..errors import MistryError
from ..jobs import JobRequest
from ..layout import Layout, point, publish
from ..metrics import Metrics
from ..queue import JobKey, Lease, LeaseLost, Outcome
from ..queue.indexed import holders_key
from ..queue.redis import RedisQueue
from ..scheduler import Scheduler
from ..storage import make_storage
from ..store import Status, Store
from .contexts import Contexts
from .registry import Announcer, BuilderState, RedisRegistry
from .transfer import Central, LogShipper

log = logging.getLogger("mistryd")
LOCALITY_WAIT = 5.0  # seconds a job is left to the live builder that holds its group's cache
LOOK_AGAIN = 1.0  # an idle worker looks at the queue this often (locality waits run out)
ANNOUNCE_EVERY = 2.0


class RemoteBuilder:
    def __init__(self, queue_url: str, server_url: str, build_path: Path, concurrency: int,
                 name: str, labels: tuple[str, ...] = (), token: str | None = None,
                 filesystem: str = "auto"):
        self.name = name
        self.labels = frozenset(labels)
        self.concurrency = concurrency
        contexts = Path(build_path) / ".mistryd" / "contexts"
        contexts.mkdir(parents=True, exist_ok=True)
        # the few settings the builder's own parts read; a job's limits come from the central
        # server with the job (its `settings`)
        self.config: Config = from_dict({"projects_path": str(contexts),
                                         "build_path": str(build_path),
                                         "job_concurrency": max(1, concurrency),
                                         "filesystem": filesystem, "builder_name": name})
        self.layout = Layout(self.config.build_path)
        self.layout.make_private()
        self.store = Store(self.layout)  # the Builder's; this machine keeps no history
        self.storage = make_storage(self.config.filesystem, self.config.build_path)
        self.runner = DockerRunner(self.config)
        self.metrics = Metrics()
        self.builder = Builder(self.layout, self.store, self.storage, self.runner, self.metrics,
                               uid=self.config.container_uid, gid=self.config.container_gid,
                               name=name)
        self.queue = RedisQueue(queue_url)
        self.central = Central(server_url, token)
        self.contexts = Contexts(contexts, self.central.fetch_context)
        self.registry = RedisRegistry(queue_url)
        self._shippers: dict[JobKey, LogShipper] = {}
        self._lock = threading.Lock()
        self.scheduler = Scheduler(
            self.builder.run, concurrency, backlog=0, queue=self.queue, make_job=self._job_of,
            name=name, lease_seconds=self._builder_timeout(), finish=self._upload,
            note_log=self._ship_log, accept=self._accept, look_again=LOOK_AGAIN)
        self.announcer = Announcer(self.registry, self._state, every=ANNOUNCE_EVERY)

    def _builder_timeout(self) -> float:
        """The central server's `builder_timeout` (published in Redis), else the default."""
        raw = self.queue.redis.get(settings_key())
        try:
            return float(json.loads(raw)["builder_timeout"]) if raw else 30.0
        except (ValueError, KeyError, TypeError):
            return 30.0

    # --- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Clean what an earlier run of this builder left (half-built folders, containers),
        then take work."""
        for pending in self.layout.root.glob("*/pending/*"):
            self.storage.remove(pending)
        self.runner.remove_orphans()
        self.queue.drop_builder(f"{self.name}-")  # an earlier run's leases: queued again at once
        self.announcer.start()
        self.scheduler.start()
        log.info("mistryd worker %s takes jobs (%d at a time%s)", self.name, self.concurrency,
                 f", labels {', '.join(sorted(self.labels))}" if self.labels else "")

    def stop(self, grace: float) -> None:
        self.scheduler.stop(grace, reason=f"builder {self.name} stopped")
        self.announcer.stop()

    def _state(self) -> BuilderState:
        running = sum(1 for f in self.scheduler.flights() if f.running)
        return BuilderState(self.name, tuple(sorted(self.labels)), running, self.concurrency,
                            time.time())

    # --- which jobs -------------------------------------------------------------------------

    def _accept(self, request: dict) -> bool:
        if request.get("central_only"):  # push builds: the central server's git and ssh-agent
            return False
        if not set(request.get("labels") or ()) <= self.labels:
            return False
        return self._near_cache(request)

    def _near_cache(self, request: dict) -> bool:
        """False while the job is young and another live builder with room holds its group's
        last cache: that one takes it, and the build stays incremental without a fetch."""
        queued_at = request.get("queued_at")
        if not isinstance(queued_at, (int, float)) or time.time() - queued_at > LOCALITY_WAIT:
            return True
        raw = self.queue.redis.hget(holders_key(),
                                    f"{request.get('project')}\t{request.get('group', '')}")
        holder = raw.decode() if isinstance(raw, bytes) else raw
        if holder is None or holder == self.name:
            return True
        now = time.time()
        timeout = self._builder_timeout()
        for b in self.registry.builders():
            if b.name == holder:
                return not (b.state(now, timeout) != "lost" and b.running < b.capacity)
        return True

    # --- one job ----------------------------------------------------------------------------

    def _job_of(self, key: JobKey, request: dict) -> Job:
        """The job's details and context from the central server, and its group's last cache
        when this machine does not hold it."""
        lease = self.queue.lease_of(key)
        if lease is None or not lease.builder.startswith(f"{self.name}-"):
            raise MistryError(f"builder {self.name} does not hold job {key}")
        details = self.central.start(lease)
        context = self.contexts.take(key, details.fingerprint)
        seed: tuple[str, ...] = ("",)  # no group cache: an empty one
        if details.cache is not None:
            group, build_id = details.cache["group"], details.cache["id"]
            here = self.layout.last_good(key.project, group)
            if here is None or here.name != build_id:
                self._fetch_cache(key.project, group, build_id)
            seed = (group,)
        r = details.request
        return Job(request=JobRequest(r["project"], dict(r["params"]), r.get("group", ""),
                                     bool(r.get("rebuild"))),
                  id=key.id, fingerprint=details.fingerprint, context=context,
                  settings=ProjectSettings(**details.settings), seed_groups=seed)

    def _fetch_cache(self, project: str, group: str, build_id: str) -> None:
        """The central server's copy of a group's last cache, as this machine's last good build
        of the group (only its data/cache: all a next build keeps of it)."""
        folder = self.layout.pending(project, f"{build_id}.cache")
        folder.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(folder):
            self.storage.remove(folder)
        self.storage.create(folder)
        try:
            self.central.fetch_cache(project, build_id, folder)
        except Exception:
            self.storage.remove(folder)
            raise
        ready = self.layout.ready(project, build_id)
        replaced = publish(folder, ready)
        if replaced is not None:
            self.storage.remove(replaced)
        point(self.layout.pointer(project, group), ready)
        log.info("mistryd worker: fetched the cache of %s group %r (build %s)", project, group,
                 build_id)

    def _ship_log(self, lease: Lease, log_file: str) -> None:
        """The log is open: ship it to the central server while it grows."""
        path = self.layout.pending(lease.key.project, lease.key.id) / "out.log"
        with self._lock:
            self._shippers[lease.key] = shipper = LogShipper(self.central, lease, path)
        shipper.start()

    def _upload(self, lease: Lease, outcome: Outcome) -> None:
        """The build is published here: the rest of its log, then the folder, to the central
        server, which finishes the job under this lease (LeaseLost when it is not held)."""
        self.contexts.release(lease.key)
        with self._lock:
            shipper = self._shippers.pop(lease.key, None)
        if shipper is not None:
            shipper.close()
        ready = self.layout.ready(lease.key.project, lease.key.id)
        if not ready.is_dir():  # nothing was published (the finish failed here): say how it ended
            raise LeaseLost(lease) if outcome.status is Status.SUCCEEDED else \
                MistryError(f"build {lease.key} left no folder to upload")
        try:
            self.central.upload(lease, ready)
        finally:
            if outcome.status is not Status.SUCCEEDED:  # only good builds seed a next one
                self.storage.remove(ready)
            else:
                self._keep_last_of_group(lease.key.project, ready)

    def _keep_last_of_group(self, project: str, keep: Path) -> None:
        """This machine keeps, per project, only the builds its group pointers name."""
        named = {p.resolve() for p in (self.layout.root / project / "groups").glob("*")}
        if (latest := self.layout.root / project / "latest").is_symlink():
            named.add(latest.resolve())
        named.add(keep.resolve())
        for folder in (self.layout.root / project / "ready").iterdir():
            if folder.resolve() not in named:
                try:
                    self.storage.remove(folder)
                except OSError:
                    log.exception("mistryd worker: could not remove %s", folder)


def run_worker(builder: RemoteBuilder, grace: float = 30) -> int:
    """Until SIGTERM or SIGINT: then no new job is taken, running builds get `grace` seconds
    and are then cancelled (and uploaded as cancelled)."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    builder.start()
    while not stopping.wait(1):
        pass
    builder.stop(grace)
    return 0
