"""Request slots taken from the store ahead of time and several at once: fewer round trips, the
same pace. Asserted on the store's answers (counted by a wrapper) and the slots' times."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from vance_provider.core.account import Account, Rate, account_id, open_store
from vance_provider.core.account.models import Grant

from .workers import BASE_URL


class Counting:
    """A store that records each ``take_request`` (how many slots were asked, how many given)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.description = store.description
        self.takes: list[tuple[int, int]] = []

    async def take_request(
        self, account: str, default: Rate, margin: float, burst: int, count: int = 1, ahead: float = 0.0
    ) -> Grant:
        grant: Grant = await self.store.take_request(account, default, margin, burst, count, ahead)
        self.takes.append((count, len(grant.slots)))
        return grant

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def spaced(times: Sequence[float], interval: float) -> bool:
    ordered = sorted(times)
    return all(b - a >= interval - 1e-6 for a, b in itertools.pairwise(ordered))


async def test_waiting_calls_share_one_round_trip(store_url: str, api_key: str) -> None:
    store = Counting(open_store(store_url))
    rate = Rate(100, 1.0)  # 10.5 ms apart with the margin
    account = Account(account_id(BASE_URL, api_key), store, default_rate=rate)  # type: ignore[arg-type]
    async with account:
        grants = await asyncio.gather(*(account.acquire_request() for _ in range(20)))
    # The first call asks alone; the 19 queued behind it are served 8 at a time (request_batch).
    assert store.takes[0] == (1, 1) and store.takes[1][0] == 8
    assert sum(given for _, given in store.takes) >= 20 and len(store.takes) < 20
    assert len(set(grants)) == 20 and spaced(grants, rate.interval(account.margin))


@pytest.mark.parametrize(  # 8 s of real time a store: PostgreSQL's only with the slow tests
    "store_url", ["sqlite", "redis", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True
)
async def test_slots_taken_before_a_429_and_due_within_its_block_are_not_used(
    store_url: str, api_key: str
) -> None:
    rate = Rate(1, 2.0)  # one slot every 2.1 s: the test's own steps take far less
    account = Account(
        account_id(BASE_URL, api_key), open_store(store_url), default_rate=rate, request_ahead=5.0
    )
    async with account:
        calls = [asyncio.create_task(account.acquire_request()) for _ in range(3)]
        done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # the two others hold slots 2.1 and 4.2 s away, and sleep
        await account.learn(retry_after=5.0)  # another call's 429: nothing before +5 s
        blocked_until = (await account.rate_state()).blocked_until
        later = [await c for c in calls if c not in done]
    assert all(t >= blocked_until for t in later), (later, blocked_until)
    assert spaced(later, rate.interval(account.margin))
