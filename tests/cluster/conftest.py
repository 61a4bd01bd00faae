"""One real redis-server for the tests of the shared queue that need no cluster of their own, and
a central server on it that builds nothing (the tests play its builders)."""

from __future__ import annotations

import pytest
from support import CLUSTER_TOKENS, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def central(start_server, redis_server):
    redis_server.flush()
    return start_server(projects=("cache",), queue=redis_server.url, job_concurrency=0,
                        tokens=CLUSTER_TOKENS)
