"""Every queue backend, behind one fixture: the contract tests run against each of them (as huey
tests its storages). A backend that serves several processes also runs the multi-process tests,
whose children open their own handle on the same queue from a `spec`."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import pytest
from queue_backends import ACROSS_PROCESSES, ALL, Backend


@pytest.fixture(params=ALL)
def backend(request, tmp_path) -> Backend:
    b = Backend(request.param, tmp_path)
    yield b
    b.close()


@pytest.fixture(params=ACROSS_PROCESSES)
def shared_backend(request, tmp_path) -> Backend:
    b = Backend(request.param, tmp_path)
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
