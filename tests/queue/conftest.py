"""Every queue backend, behind one fixture: the contract tests run against each of them (as huey
tests its storages). A backend that serves several processes also runs the multi-process tests,
whose children open their own handle on the same queue from a `spec`."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import pytest
from queue_backends import ACROSS_PROCESSES, ALL, Backend, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """One real redis-server on loopback for the run; each test that uses it starts empty."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def _backend(request, tmp_path) -> Backend:
    server = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flush()
    return Backend(request.param, tmp_path, server)


@pytest.fixture(params=ALL)
def backend(request, tmp_path) -> Backend:
    b = _backend(request, tmp_path)
    yield b
    b.close()


@pytest.fixture(params=ACROSS_PROCESSES)
def shared_backend(request, tmp_path) -> Backend:
    b = _backend(request, tmp_path)
    yield b
    b.close()


@pytest.fixture
def processes() -> Callable[..., multiprocessing.Process]:
    """Start real processes (forked: the queue is opened anew in each); all are ended after
    the test."""
    started: list[multiprocessing.Process] = []
    context = multiprocessing.get_context("fork")

    def start(target, *args) -> multiprocessing.Process:
        p = context.Process(target=target, args=args, daemon=True)
        p.start()
        started.append(p)
        return p

    start.context = context  # type: ignore[attr-defined]
    yield start
    for p in started:
        if p.is_alive():
            p.kill()
        p.join(10)
