"""A PostgreSQL account row held by a transaction that does not end: an operation waits for it
only so long (``lock_timeout``), then fails as a store that is down does, and the store's own
transactions left idle (a worker frozen mid-operation) are ended by the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from vance_provider.core.account import Account, AccountStoreUnavailableError, Rate, account_id
from vance_provider.core.account import state as ops
from vance_provider.core.account.state import AccountState

from .workers import BASE_URL

pytest.importorskip("psycopg2")

T = TypeVar("T")


async def _unless_stuck(call: Awaitable[T]) -> T:
    """``call``, failing the test rather than hanging it if it waits for the lock with no bound
    (a guard far above the timeouts the tests configure, not a measure of them)."""
    try:
        return await asyncio.wait_for(call, 60)
    except TimeoutError:
        pytest.fail("the store waited for the account's row with no bound")


async def test_a_row_held_by_another_session_is_waited_for_only_so_long(
    postgres_url: str, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    from vance_provider.core.account.postgres import PostgresStore

    store = PostgresStore(postgres_url, lock_timeout=0.2)
    account = Account(account_id(BASE_URL, api_key), store, budget="photos", default_rate=Rate(1000, 1.0))
    holder = psycopg2.connect(postgres_url)  # a psql session, say
    async with account:
        await account.set_budget("photos", 100)
        charged = await account.reserve(10)  # a job in flight; the store's connection is open
        opened: list[object] = []
        open_connection = store._open

        def counted() -> Any:
            opened.append(open_connection())
            return opened[-1]

        monkeypatch.setattr(store, "_open", counted)

        with holder.cursor() as cur:  # left open in a transaction that holds the row
            cur.execute("SELECT 1 FROM vance_account_state WHERE account = %s FOR UPDATE", (account.id,))
            assert cur.fetchone() == (1,)
        try:
            with pytest.raises(AccountStoreUnavailableError) as refused:
                await _unless_stuck(account.reserve(1))
            assert "could not reserve credits" in str(refused.value) and "lock_timeout" in str(refused.value)
            assert not opened, "a lock wait that timed out is not tried again on a new connection"
            # The job's charge, recorded while the row is held, is kept (not lost), and the rate
            # and the job slots go on per process.
            await _unless_stuck(account.settle(charged, 10))
            await _unless_stuck(account.acquire_request())
            assert (await _unless_stuck(account.acquire_slot())).fallback
        finally:
            holder.rollback()
            holder.close()
        await account.renew()  # what the heartbeat does: the kept charge goes to the store
        state = await account.get_budget("photos")
        assert state is not None
        assert state.spent == 10 and state.reserved == 0, "the charge recorded once, nothing else"


async def test_a_worker_frozen_mid_operation_lets_go_of_the_row(postgres_url: str, api_key: str) -> None:
    from vance_provider.core.account.postgres import PostgresStore

    frozen = PostgresStore(postgres_url, idle_timeout=0.2)
    other = PostgresStore(postgres_url, lock_timeout=30)  # far longer than the frozen worker's idle
    locked, thawed = threading.Event(), threading.Event()

    def freeze(state: AccountState, now: float) -> Any:
        locked.set()  # the row is locked: the worker stops here, its transaction open
        thawed.wait()
        return ops.set_budget(state, now, "frozen", 5, "total")

    frozen_op = asyncio.ensure_future(frozen._apply(api_key, "set a budget", freeze))
    try:
        assert await asyncio.to_thread(locked.wait, 60), frozen_op
        # The server ends the frozen worker's transaction: the other worker gets the row.
        await _unless_stuck(other.set_budget(api_key, "photos", 100, "day"))
    finally:
        thawed.set()
    with pytest.raises(AccountStoreUnavailableError):  # the frozen worker's change is not kept
        await frozen_op
    assert [b.name for b in await other.budgets(api_key)] == ["photos"]
    assert [b.name for b in await frozen.budgets(api_key)] == ["photos"]  # on a new connection
    await frozen.close()
    await other.close()
