"""Fixtures of the account tests: a store URL per kind of store (SQLite file, real Redis, real
PostgreSQL), and an account key unique to each test (so tests sharing one Redis server never share
an account). The servers start once per session, and only when a test asks for one."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.servers import PostgresServer, RedisServer, ServerNotAvailable, ServerProcess

S = TypeVar("S", bound=ServerProcess)


def _started(make: Callable[[], S]) -> Iterator[S]:
    """A server for the session, started on first use; the test skips where there is none."""
    try:
        server = make()
    except ServerNotAvailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from _started(RedisServer)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg2")
    yield from _started(PostgresServer)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A database of this test's own on the session's PostgreSQL server."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:16]}")


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a shared store: a SQLite file of this test, the session's Redis server, or a
    database of this test's own on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/account.sqlite3"
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def api_key() -> str:
    return f"sk_live_{uuid.uuid4().hex}"
