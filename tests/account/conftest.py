"""Fixtures of the account tests: a store URL per kind of store (SQLite file, real Redis), and an
account key unique to each test (so tests sharing one Redis server never share an account)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import RedisServer, ServerNotAvailable


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except ServerNotAvailable as exc:
        pytest.skip(str(exc))
    server.start()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a shared store: a SQLite file of this test, or the session's Redis server."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/account.sqlite3"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def api_key() -> str:
    return f"sk_live_{uuid.uuid4().hex}"
