"""Who builds: every builder (a `mistryd worker` elsewhere, or a builder process of the server
itself) announces itself every few seconds with its labels, capacity and what it runs; a builder
silent for longer than `builder_timeout` is lost. With a shared queue the registry is one Redis
hash beside the queue (`mistryd:queue:<name>:builders`); with the embedded queue it is one small
JSON file per builder process under `.mistryd/builders/`.

`GET /api/queue/stats`, the dashboard, `/metrics` (builders by state) and the coordinator (lost
builders' jobs queued again) read it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from ..every import Every

log = logging.getLogger("mistryd")
FORGET_AFTER = 24 * 3600.0  # a builder silent this long is dropped from the list


@dataclass(frozen=True)
class BuilderState:
    name: str
    labels: tuple[str, ...]
    running: int
    capacity: int
    last_seen: float  # seconds since the epoch

    def state(self, now: float, timeout: float) -> str:
        """"lost" (silent for longer than `timeout`), "busy" (every slot taken) or "idle"."""
        if now - self.last_seen > timeout:
            return "lost"
        return "busy" if self.running >= self.capacity else "idle"

    def to_json(self) -> dict:
        return asdict(self) | {"labels": list(self.labels)}

    @classmethod
    def from_json(cls, raw: dict) -> BuilderState:
        return cls(str(raw["name"]), tuple(raw.get("labels") or ()), int(raw["running"]),
                   int(raw["capacity"]), float(raw["last_seen"]))


class Registry(Protocol):
    def announce(self, state: BuilderState) -> None: ...

    def builders(self) -> list[BuilderState]: ...

    def forget(self, name: str) -> None: ...


class RedisRegistry:
    def __init__(self, url: str, queue_name: str = "mistryd"):
        import redis  # the optional extra, as the queue on Redis

        self.redis = redis.Redis.from_url(url)
        self.key = f"mistryd:queue:{queue_name}:builders"

    def announce(self, state: BuilderState) -> None:
        self.redis.hset(self.key, state.name, json.dumps(state.to_json()))

    def builders(self) -> list[BuilderState]:
        found = []
        now = time.time()
        for name, raw in sorted(self.redis.hgetall(self.key).items()):
            try:
                state = BuilderState.from_json(json.loads(raw))
            except (ValueError, KeyError, TypeError):
                continue
            if now - state.last_seen > FORGET_AFTER:
                self.redis.hdel(self.key, name)
                continue
            found.append(state)
        return found

    def forget(self, name: str) -> None:
        self.redis.hdel(self.key, name)


class FileRegistry:
    def __init__(self, folder: Path):
        self.folder = folder

    def announce(self, state: BuilderState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{state.name}.json"
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        temp.write_text(json.dumps(state.to_json()))
        os.replace(temp, path)

    def builders(self) -> list[BuilderState]:
        found = []
        now = time.time()
        for path in sorted(self.folder.glob("*.json")):
            try:
                state = BuilderState.from_json(json.loads(path.read_text()))
            except OSError:
                continue
            except (ValueError, KeyError, TypeError):  # not ours (written whole, by os.replace)
                path.unlink(missing_ok=True)
                continue
            if now - state.last_seen > FORGET_AFTER:
                path.unlink(missing_ok=True)
                continue
            found.append(state)
        return found

    def forget(self, name: str) -> None:
        (self.folder / f"{name}.json").unlink(missing_ok=True)


def listed(registry: Registry, now: float, timeout: float) -> list[dict]:
    """Every builder as the API and the dashboard show it: its announcement and its `state`."""
    return [b.to_json() | {"state": b.state(now, timeout)} for b in registry.builders()]


def forget_earlier(registry: Registry, prefix: str) -> list[str]:
    """Take the builders whose names start with `prefix` off the list: at a server's start,
    its earlier builder processes (dead: the server holds build_path's lock), whose entries
    would else show as lost for a day. Those that live announce again within seconds."""
    gone = [b.name for b in registry.builders() if b.name.startswith(prefix)]
    for name in gone:
        registry.forget(name)
    return gone


def open_registry(queue_url: str | None, state_dir: Path) -> Registry:
    """The registry beside the queue: Redis's with a shared queue, else files in `state_dir`."""
    if queue_url is not None:
        return RedisRegistry(queue_url)
    return FileRegistry(state_dir / "builders")


class Announcer:
    """A thread that announces `state()` every `every` seconds until stopped; then the builder
    is forgotten (a clean stop is not a loss)."""

    def __init__(self, registry: Registry, state: Callable[[], BuilderState], every: float = 2.0):
        self.registry = registry
        self.state = state
        self._every = Every(every, self._announce, "mistryd-announcer",
                            "mistryd: could not announce this builder")
        self._name: str | None = None

    def start(self) -> None:
        self._every.start()

    def _announce(self) -> None:
        state = self.state()
        self._name = state.name
        self.registry.announce(state)

    def stop(self) -> None:
        self._every.stop()
        if self._name is not None:
            try:
                self.registry.forget(self._name)
            except Exception:  # noqa: BLE001
                log.exception("mistryd: could not take this builder off the list")
