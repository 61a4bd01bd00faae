"""One real redis-server for the tests of the shared queue that need no cluster of their own."""

from __future__ import annotations

import pytest
from support import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
