"""The store goes away mid-run: budgets are refused with a typed error and nothing is spent; the
rate and the slots go on per process, with one warning; all is account-wide again once it is back."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.servers import PostgresServer, RedisServer, ServerNotAvailable, ServerProcess
from vance_provider.core.account import AccountStoreUnavailableError, Rate, open_account

from . import workers
from .workers import BASE_URL


class Server:
    """A store's server of this test's own (stopped, killed, started by the test) and its URL."""

    def __init__(self, process: ServerProcess, url: str, says: str) -> None:
        self.process, self.url, self.says = process, url, says
        self.stop, self.kill, self.start = process.stop, process.kill, process.start


@pytest.fixture(params=["redis", "postgres"])
def server(request: pytest.FixtureRequest) -> Any:
    if request.param == "postgres":
        pytest.importorskip("psycopg2")
    try:
        process = RedisServer() if request.param == "redis" else PostgresServer()
    except ServerNotAvailable as exc:
        pytest.skip(str(exc))
    with process:
        if isinstance(process, PostgresServer):
            yield Server(process, process.create_database("vance"), "PostgreSQL server is running")
        else:
            yield Server(process, process.url, "Redis server is running")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "vance_provider.account" and r.levelno == logging.WARNING
    ]


async def test_the_server_stopped_mid_run(
    server: Server, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "vance_provider")
    account = open_account(
        BASE_URL, api_key, server.url, budget="photos", recheck_after=0.05, default_rate=Rate(1000, 1.0)
    )
    async with account:
        await account.set_budget("photos", 100, "day")
        settled = await account.reserve(10)
        await account.settle(settled, 10)
        held = await account.reserve(5)  # a job in flight when the store goes away
        assert not (await account.acquire_slot()).fallback

        server.stop()
        for _ in range(3):
            with pytest.raises(AccountStoreUnavailableError) as refused:
                await account.reserve(1)
            assert f"{account.store.description} could not" in str(refused.value)
            assert "127.0.0.1" in account.store.description and server.says in str(refused.value)
        # The rate and the slots go on, per process, with one warning however many calls.
        for _ in range(5):
            await account.acquire_request()
        fallback = [await account.acquire_slot() for _ in range(2)]
        assert all(lease.fallback for lease in fallback) and account.degraded
        assert len(_warnings(caplog)) == 1
        assert "could not" in _warnings(caplog)[0] and "on its own" in _warnings(caplog)[0]

        server.start()  # the same port, the same data
        lease = await account.acquire_slot()
        deadline = time.monotonic() + 30  # the store is tried again every recheck_after
        while lease.fallback and time.monotonic() < deadline:
            await account.release(lease)
            await asyncio.sleep(0.02)
            lease = await account.acquire_slot()
        assert not lease.fallback and not account.degraded
        await account.release(held)
        state = await account.get_budget("photos")
        assert state is not None
        assert state.spent == 10 and state.reserved == 0, "nothing was spent while the store was down"
        assert len(_warnings(caplog)) == 1  # still the one warning
        assert any("is back" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


async def test_a_charge_recorded_while_the_server_is_down_is_sent_when_it_is_back(
    server: Server, api_key: str
) -> None:
    async with open_account(BASE_URL, api_key, server.url, budget="photos", recheck_after=0.05) as account:
        await account.set_budget("photos", 100)
        reservation = await account.reserve(7)
        server.kill()
        await account.settle(reservation, 6)  # the job was charged: kept, not lost
        server.start()
        await account.renew()  # what the heartbeat does
        state = await account.get_budget("photos")
        assert state is not None and state.spent == 6 and state.reserved == 0


async def test_an_unusable_sqlite_file_refuses_budgets(tmp_path: Path, api_key: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    url = f"sqlite://{tmp_path}/a-file/account.sqlite3"
    async with open_account(BASE_URL, api_key, url, budget="photos") as account:
        with pytest.raises(AccountStoreUnavailableError) as refused:
            await account.reserve(1)
        assert "writable" in str(refused.value)
        await account.acquire_request()  # the rate goes on per process
        assert (await account.acquire_slot()).fallback


@pytest.mark.slow
def test_four_processes_when_the_server_stops_and_comes_back(server: Server, api_key: str) -> None:
    async def set_budget() -> None:
        async with open_account(BASE_URL, api_key, server.url) as account:
            await account.set_budget("shared", 100)

    asyncio.run(set_budget())
    ctx, n = workers.spawn(), 4
    ready, stopped, back, out = ctx.Barrier(n + 1), ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=workers.store_down_worker, args=(server.url, api_key, ready, stopped, back, out))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    try:
        ready.wait(120)  # every worker has spent its credit through the store
        server.stop()
        stopped.set()
        ready.wait(120)  # every worker has seen the store down
        server.start()
        back.set()
        seen = workers.collect(out, procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    for s in seen:
        assert s["refused"] == 3, "a budget was reserved while the store was down"
        assert s["fallback_slot"] and s["warnings_while_down"] == 1 and s["warnings"] == 1
        assert s["recovered"]

    async def spent() -> Any:
        async with open_account(BASE_URL, api_key, server.url) as account:
            return await account.get_budget("shared")

    state = asyncio.run(spent())
    assert state.spent == n and state.reserved == 0  # the credits spent before, nothing while down
