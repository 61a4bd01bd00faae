"""The builders' registry (mistryd/remote/registry.py): a builder's state from its last
announcement, and one contract run against both backends (files for the embedded queue, a real
redis-server for the shared one), as the queue backends have theirs."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import RedisServer, wait_for

from mistryd.remote.registry import (
    FORGET_AFTER,
    Announcer,
    BuilderState,
    FileRegistry,
    RedisRegistry,
    Registry,
    forget_earlier,
    open_registry,
)

NOW = 1_800_000_000.0
_names = itertools.count()


def builder(name: str = "b1", running: int = 0, capacity: int = 2, last_seen: float = NOW,
            labels: tuple[str, ...] = ()) -> BuilderState:
    return BuilderState(name, labels, running, capacity, last_seen)


# --- states -----------------------------------------------------------------------------------


def test_a_builder_with_a_free_slot_is_idle_and_one_with_none_busy():
    assert builder(running=0).state(NOW, 30) == "idle"
    assert builder(running=1, capacity=2).state(NOW, 30) == "idle"
    assert builder(running=2, capacity=2).state(NOW, 30) == "busy"


def test_a_builder_silent_for_longer_than_the_timeout_is_lost_whatever_it_ran():
    assert builder(last_seen=NOW - 30).state(NOW, 30) == "idle"  # at the limit: not yet
    assert builder(last_seen=NOW - 30.5).state(NOW, 30) == "lost"
    assert builder(running=2, last_seen=NOW - 31).state(NOW, 30) == "lost"


def test_a_state_survives_its_json():
    state = builder("big-1", running=1, capacity=4, labels=("big", "x86"))
    raw = json.loads(json.dumps(state.to_json()))
    assert raw == {"name": "big-1", "labels": ["big", "x86"], "running": 1, "capacity": 4,
                   "last_seen": NOW}
    assert BuilderState.from_json(raw) == state


# --- one contract, both backends ----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(params=["files", "redis"])
def open_list(request, tmp_path) -> Callable[[], Registry]:
    """Opens the same list again each call, as another process would."""
    if request.param == "files":
        return lambda: FileRegistry(tmp_path / "builders")
    url, name = request.getfixturevalue("redis_server").url, f"test-{next(_names)}"
    return lambda: RedisRegistry(url, queue_name=name)  # a list of its own


@pytest.fixture
def registry(open_list) -> Registry:
    return open_list()


def test_announced_builders_are_listed_and_a_new_announcement_replaces_the_last(registry):
    now = time.time()
    assert registry.builders() == []
    registry.announce(builder("b1", last_seen=now))
    registry.announce(builder("b2", running=1, labels=("big",), last_seen=now))
    registry.announce(builder("b1", running=2, last_seen=now + 1))
    assert registry.builders() == [builder("b1", running=2, last_seen=now + 1),
                                   builder("b2", running=1, labels=("big",), last_seen=now)]


def test_a_forgotten_builder_is_off_the_list(registry):
    now = time.time()
    registry.announce(builder("b1", last_seen=now))
    registry.announce(builder("b2", last_seen=now))
    registry.forget("b1")
    registry.forget("never-there")  # no error
    assert [b.name for b in registry.builders()] == ["b2"]


def test_a_builder_silent_for_a_day_is_dropped_but_a_lost_one_stays_listed(registry):
    now = time.time()
    registry.announce(builder("lost", last_seen=now - 120))
    registry.announce(builder("gone", last_seen=now - FORGET_AFTER - 60))
    assert [b.name for b in registry.builders()] == ["lost"]
    registry.announce(builder("gone", last_seen=now))  # it came back: listed again
    assert [b.name for b in registry.builders()] == ["gone", "lost"]


def test_forget_earlier_takes_one_machines_builder_processes_off_the_list(registry):
    now = time.time()
    for name in ("central.101", "central.102", "remote-1", "centralx"):
        registry.announce(builder(name, last_seen=now))
    assert sorted(forget_earlier(registry, "central.")) == ["central.101", "central.102"]
    assert [b.name for b in registry.builders()] == ["centralx", "remote-1"]


def test_registries_of_two_processes_see_one_list(registry, open_list):
    open_list().announce(builder("elsewhere", last_seen=time.time()))
    assert [b.name for b in registry.builders()] == ["elsewhere"]
    open_list().forget("elsewhere")
    assert registry.builders() == []


# --- the file backend ---------------------------------------------------------------------------


def test_a_file_is_replaced_whole_and_no_temporary_file_stays(tmp_path):
    registry = FileRegistry(tmp_path / "builders")
    registry.announce(builder("b1", last_seen=time.time()))
    registry.announce(builder("b1", running=1, last_seen=time.time()))
    assert sorted(p.name for p in (tmp_path / "builders").iterdir()) == ["b1.json"]
    assert json.loads((tmp_path / "builders" / "b1.json").read_text())["running"] == 1


def test_a_file_that_is_not_an_announcement_is_skipped_and_removed(tmp_path):
    folder = tmp_path / "builders"
    registry = FileRegistry(folder)
    registry.announce(builder("good", last_seen=time.time()))
    (folder / "junk.json").write_text("{not json")
    (folder / "partial.json").write_text(json.dumps({"name": "partial"}))
    (folder / "notes.txt").write_text("not a .json: left alone")
    assert [b.name for b in registry.builders()] == ["good"]
    assert sorted(p.name for p in folder.iterdir()) == ["good.json", "notes.txt"]


def test_a_file_registry_with_no_folder_yet_lists_nobody(tmp_path):
    assert FileRegistry(tmp_path / "not-yet").builders() == []


def test_open_registry_is_files_without_a_queue_and_redis_with_one(tmp_path, redis_server):
    files = open_registry(None, tmp_path)
    assert isinstance(files, FileRegistry) and files.folder == tmp_path / "builders"
    shared = open_registry(redis_server.url, tmp_path)
    assert isinstance(shared, RedisRegistry) and shared.key == "mistryd:queue:mistryd:builders"


# --- the announcer ------------------------------------------------------------------------------


class Flaky(FileRegistry):
    """Its first announcement fails, as a Redis that is away for a moment."""

    def __init__(self, folder: Path):
        super().__init__(folder)
        self.failures = 1

    def announce(self, state: BuilderState) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis is away")
        super().announce(state)


def test_the_announcer_keeps_announcing_through_a_failure_and_forgets_on_stop(tmp_path):
    registry = Flaky(tmp_path / "builders")
    running = threading.Event()
    seen: list[float] = []

    def state() -> BuilderState:
        seen.append(time.time())
        return builder("me", running=int(running.is_set()), last_seen=time.time())

    announcer = Announcer(registry, state, every=0.05)
    announcer.start()
    wait_for(lambda: [b.name for b in registry.builders()] == ["me"], timeout=10)
    first = registry.builders()[0].last_seen
    running.set()
    wait_for(lambda: registry.builders()[0].running == 1, timeout=10)
    assert registry.builders()[0].last_seen > first  # announced again, fresh
    announcer.stop()
    assert registry.builders() == []  # a clean stop is not a loss
    count = len(seen)
    time.sleep(0.2)
    assert len(seen) == count  # and it announces no more


def test_an_announcer_stopped_before_announcing_forgets_nothing(tmp_path):
    registry = FileRegistry(tmp_path / "builders")
    registry.announce(builder("other", last_seen=time.time()))
    Announcer(registry, lambda: builder("me"), every=60).stop()
    assert [b.name for b in registry.builders()] == ["other"]
