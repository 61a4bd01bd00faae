"""Each step of a build's finish fails (ENOSPC), injected at that step: before the move to ready/
the build fails whole and leaves nothing behind; after it, the published build wins."""

from __future__ import annotations

import errno

import pytest

from mistryd import builder

pytestmark = pytest.mark.docker


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("step", ["write_json_atomically", "publish"])
def test_a_failure_before_the_move_fails_the_build_and_leaves_nothing(start_server, monkeypatch,
                                                                      step):
    srv = start_server()
    monkeypatch.setattr(builder, step, no_space)
    info = srv.build("hello")
    assert info["Status"] == "failed" and "could not store the build" in info["ErrBuild"]
    assert list((srv.build_path / "hello" / "pending").iterdir()) == []
    assert not (srv.build_path / "hello" / "ready" / info["ID"]).exists()
    assert srv.server.store.get("hello", info["ID"]).status.value == "failed"
    monkeypatch.undo()
    again = srv.build("hello")  # nothing wedged: the same request builds
    assert again["Status"] == "succeeded" and again["Cached"] is False


def test_a_pointer_that_cannot_move_does_not_fail_a_published_build(start_server, monkeypatch):
    srv = start_server()
    monkeypatch.setattr(builder, "point", no_space)
    info = srv.build("hello", group="g")
    assert info["Status"] == "succeeded", info
    assert srv.build("hello", group="g")["Cached"] is True
    assert srv.server.store.get("hello", info["ID"]).status.value == "succeeded"


def test_an_index_that_cannot_be_written_at_the_end_is_mended_from_the_folder(start_server,
                                                                             monkeypatch):
    srv = start_server()
    monkeypatch.setattr(srv.server.store, "record_finished", no_space)
    info = srv.build("hello")
    assert info["Status"] == "succeeded"  # what the waiters get is what was published
    assert srv.build("hello")["Cached"] is True
    assert srv.server.store.get("hello", info["ID"]).status.value == "running"  # lagging
    build_path = srv.build_path
    monkeypatch.undo()
    srv.stop()
    again = start_server(build_path=build_path)
    assert again.server.store.get("hello", info["ID"]).status.value == "succeeded"
