"""The API key never appears in the store (Redis keys and values, the SQLite file, file names,
PostgreSQL's table), in a log record, a repr or an exception: the account is known by a hash
only. Nor does a store URL's password."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client

from tests.servers import PostgresServer, RedisServer, free_port
from vance_provider.core.account import (
    AccountStoreUnavailableError,
    BudgetExhaustedError,
    UnknownBudgetError,
    account_id,
    open_account,
    open_store,
)

from .workers import BASE_URL


async def _exercise(url: str, key: str) -> list[str]:
    """Everything an engine and the CLI do; returns the reprs and messages it met."""
    seen: list[str] = []
    account = open_account(BASE_URL, key, url, budget="photos", max_jobs=2)
    seen.append(repr(account))
    seen.append(repr(account.store))
    seen.append(repr(await account.set_budget("photos", 10, "day")))
    reservation = await account.reserve(4)
    seen.append(repr(reservation))
    with pytest.raises(BudgetExhaustedError) as exhausted:
        await account.reserve(7)
    seen.append(str(exhausted.value))
    with pytest.raises(UnknownBudgetError) as unknown:
        await account.reserve(1, budget="videos")
    seen.append(str(unknown.value))
    await account.settle(reservation, 3)
    await account.learn(60, 60.0)
    await account.learn(60, 60.0, retry_after=0.01, reset_epoch=None)
    seen.append(repr(await account.acquire_request()))
    lease = await account.acquire_slot()
    seen.append(repr(lease))
    await account.renew()
    seen.append(repr(await account.slot_state()))
    seen.append(repr(await account.rate_state()))
    seen.append(repr(await account.budgets()))
    await account.release(lease)
    await account.close()
    return seen


def _assert_clean(text: str, key: str, where: str) -> None:
    secret = key.removeprefix("sk_live_")
    assert secret not in text, f"the key appears in {where}"


def _dump_redis(url: str) -> str:
    client = redis_client.Redis.from_url(url, decode_responses=True)
    parts = []
    for name in client.scan_iter("*"):
        parts.append(name)
        kind = client.type(name)
        if kind == "hash":
            parts.append(repr(client.hgetall(name)))
        elif kind == "zset":
            parts.append(repr(client.zrange(name, 0, -1, withscores=True)))
        elif kind == "set":
            parts.append(repr(client.smembers(name)))
        elif kind == "string":
            parts.append(repr(client.get(name)))
    client.close()
    return "\n".join(parts)


async def test_redis_holds_no_key(redis_server: RedisServer, api_key: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    seen = await _exercise(redis_server.url, api_key)
    dump = _dump_redis(redis_server.url)
    assert account_id(BASE_URL, api_key) in dump  # the account is there, by its hash
    _assert_clean(dump, api_key, "Redis")
    _assert_clean("\n".join(seen), api_key, "a repr or an error")
    _assert_clean("\n".join(r.getMessage() for r in caplog.records), api_key, "the logs")


def _dump_postgres(url: str) -> str:
    import psycopg2

    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT account, state FROM vance_account_state")
        rows = cur.fetchall()
    conn.close()
    return repr(rows)


async def test_postgres_holds_no_key(postgres_url: str, api_key: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    seen = await _exercise(postgres_url, api_key)
    dump = _dump_postgres(postgres_url)
    assert account_id(BASE_URL, api_key) in dump  # the account is there, by its hash
    _assert_clean(dump, api_key, "PostgreSQL")
    _assert_clean("\n".join(seen), api_key, "a repr or an error")
    _assert_clean("\n".join(r.getMessage() for r in caplog.records), api_key, "the logs")


async def test_a_postgres_password_appears_nowhere(
    postgres_server: PostgresServer, api_key: str, caplog: Any
) -> None:
    """Not in a description, a repr, a log record or an error: the server up (it trusts loopback,
    so lets any password by), then down, with the password in the URL's two places."""
    caplog.set_level(logging.DEBUG)
    password = f"pg-{uuid.uuid4().hex}/+x"  # a slash and a plus: percent-encoded in a URL
    encoded = password.replace("/", "%2F").replace("+", "%2B")
    up = postgres_server.create_database("secrets").replace("postgres@", f"postgres:{encoded}@")
    seen = await _exercise(up, api_key)
    store = open_store(up)
    seen += [store.description, repr(store), repr(vars(store))]
    await store.close()
    port = free_port()  # nothing listens there
    for down in (
        f"postgresql://postgres:{encoded}@127.0.0.1:{port}/vance",
        f"postgres://127.0.0.1:{port}/vance?user=postgres&password={encoded}",
        f"postgresql://postgres:{encoded}@[::1/vance",  # libpq's error quotes this URL whole
    ):
        account = open_account(BASE_URL, api_key, down, budget="photos")
        with pytest.raises(AccountStoreUnavailableError) as refused:
            await account.reserve(1)
        await account.acquire_request()  # the rate goes on per process, with a warning
        seen += [str(refused.value), repr(account), repr(account.store)]
        await account.close()
        assert "could not reserve credits" in seen[-3] and "postgres" in seen[-3], seen[-3]
    seen += [r.getMessage() for r in caplog.records]
    for form in (password, encoded):
        assert form not in "\n".join(seen)


async def test_a_url_with_no_password_is_described_by_every_store_made_from_it(postgres_url: str) -> None:
    """Only passwords are kept out of descriptions: a URL with none is not taken for a secret
    whole, which would leave a second store made from it described as ``***``."""
    for _ in range(2):
        store = open_store(postgres_url)
        assert store.description == postgres_url.replace("postgresql+psycopg2://", "postgresql://")
        await store.close()


async def test_the_local_store_holds_no_key(
    tmp_path: Path, api_key: str, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("VANCE_STATE_DIR", raising=False)
    monkeypatch.delenv("VANCE_ACCOUNT_STORE", raising=False)
    caplog.set_level(logging.DEBUG)
    seen = await _exercise("local", api_key)
    files = list((tmp_path / "state").rglob("*"))
    assert tmp_path / "state" / "vance" / "account.sqlite3" in files
    for path in files:
        _assert_clean(str(path), api_key, "a file name")
        if path.is_file():
            _assert_clean(path.read_bytes().decode("latin-1"), api_key, str(path))
    _assert_clean("\n".join(seen), api_key, "a repr or an error")
    _assert_clean("\n".join(r.getMessage() for r in caplog.records), api_key, "the logs")


async def test_a_store_down_says_no_key(tmp_path: Path, api_key: str, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    # No server there: every message about it, and the password of its URL, stay clean.
    url = f"redis://user:{api_key}@127.0.0.1:{free_port()}/0"
    account = open_account(BASE_URL, api_key, url, budget="photos")
    with pytest.raises(AccountStoreUnavailableError) as refused:
        await account.reserve(1)
    await account.acquire_request()
    texts = [str(refused.value), repr(account), repr(account.store)]
    texts += [r.getMessage() for r in caplog.records]
    await account.close()
    _assert_clean("\n".join(texts), api_key, "a message about the store")
