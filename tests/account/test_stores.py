"""The stores behave alike, step by step, on a clock the test moves (the Redis and PostgreSQL
stores take it instead of the server's): the rate's pacing, leases expiring, budgets rolling over by period."""

from __future__ import annotations

import calendar
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import RedisServer
from vance_provider.core.account import (
    BudgetExhaustedError,
    MemoryStore,
    Rate,
    SlotLease,
    SqliteStore,
    UnknownBudgetError,
    open_store,
)
from vance_provider.core.account.models import period_key
from vance_provider.core.api.errors import ConfigurationError


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def epoch(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> float:
    return float(calendar.timegm((y, m, d, hh, mm, 0)))


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    clock = Clock(epoch(2026, 12, 6, 12))
    if request.param == "memory":
        made: Any = MemoryStore(clock=clock)
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "a.sqlite3", clock=clock)
    elif request.param == "postgres":
        from vance_provider.core.account.postgres import PostgresStore

        made = PostgresStore(request.getfixturevalue("postgres_url"), clock=clock)
    else:
        from vance_provider.core.account.redis_store import RedisStore

        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisStore(server.url, clock=clock)
    made.clock = clock
    yield made
    await made.close()


DEFAULT = Rate(10, 10.0)  # one request a second until a rate is learned


async def test_requests_are_paced_by_the_default_then_by_what_was_learned(store: Any, api_key: str) -> None:
    a, clock = api_key, store.clock
    assert (await store.take_request(a, DEFAULT, 1.0, 1)).granted
    refused = await store.take_request(a, DEFAULT, 1.0, 1)
    assert not refused.granted and refused.wait == pytest.approx(1.0)
    clock.now += 1.0
    assert (await store.take_request(a, DEFAULT, 1.0, 1)).granted
    learned = await store.learn_rate(a, 100, 10.0, None)  # ten a second
    assert learned.learned and learned.limit == 100 and learned.window == 10.0
    clock.now += 1.0
    assert (await store.take_request(a, DEFAULT, 1.0, 1)).granted
    assert (await store.take_request(a, DEFAULT, 1.0, 1)).wait == pytest.approx(0.1)
    # A 429: nothing for 5 s, then one request, then the others paced.
    await store.learn_rate(a, None, None, 5.0)
    assert (await store.take_request(a, DEFAULT, 1.0, 1)).wait == pytest.approx(5.0)
    clock.now += 5.0
    assert (await store.take_request(a, DEFAULT, 1.0, 1)).granted
    assert not (await store.take_request(a, DEFAULT, 1.0, 1)).granted
    # A burst of 3 lets three go at once after a pause.
    clock.now += 10.0
    assert [(await store.take_request(a, DEFAULT, 1.0, 3)).granted for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    await store.close()


async def test_slots_expire_unless_renewed(store: Any, api_key: str) -> None:
    a, clock = api_key, store.clock
    first = await store.acquire_slot(a, "w1", 30.0, 2)
    second = await store.acquire_slot(a, "w2", 30.0, 2)
    assert isinstance(first, SlotLease) and isinstance(second, SlotLease)
    assert await store.acquire_slot(a, "w3", 30.0, 2) == 0.0  # full; the next slot freed is for "w3"
    # "w5", later, waits behind "w3": it may look again when the first lease could expire.
    clock.now += 1.0
    assert await store.acquire_slot(a, "w5", 30.0, 2) == pytest.approx(29.0)
    clock.now += 19.0
    assert await store.renew_slots(a, [first.id], 30.0) == []
    clock.now += 15.0  # the second expired, the first was renewed
    state = await store.slot_state(a, 2)
    assert [h for _, h, _ in state.leases] == ["w1"]
    assert await store.renew_slots(a, [second.id], 30.0) == [second.id]
    assert isinstance(await store.acquire_slot(a, "w3", 30.0, 2), SlotLease)
    await store.set_capacity(a, 1)
    assert (await store.slot_state(a, 2)).capacity == 1
    assert isinstance(await store.acquire_slot(a, "w4", 30.0, 2), float)
    await store.release_slot(a, first.id)
    assert isinstance(await store.acquire_slot(a, "w4", 30.0, 2), float)  # still one in use: capacity 1
    await store.close()


async def test_budgets_reserve_settle_release_expire_and_roll_over(store: Any, api_key: str) -> None:
    a, clock = api_key, store.clock
    with pytest.raises(UnknownBudgetError):
        await store.reserve(a, "photos", 1.0, "w", 60.0)
    await store.set_budget(a, "photos", 10.0, "day")
    await store.set_budget(a, "all", 25.0, "total")
    r1 = await store.reserve(a, "photos", 4.0, "w1", 60.0)
    r2 = await store.reserve(a, "photos", 5.5, "w2", 60.0)
    with pytest.raises(BudgetExhaustedError) as refused:
        await store.reserve(a, "photos", 1.0, "w3", 60.0)
    assert refused.value.remaining == pytest.approx(0.5) and "vance budget set photos" in str(refused.value)
    assert await store.settle(a, r1, 3.0)
    await store.release_reservation(a, r2)
    (photos,) = [b for b in await store.budgets(a) if b.name == "photos"]
    assert (photos.spent, photos.reserved, photos.remaining, photos.period_key) == (
        3.0,
        0.0,
        7.0,
        "2026-12-06",
    )
    # A reservation not renewed expires: its credits return.
    r3 = await store.reserve(a, "photos", 7.0, "w4", 60.0)
    clock.now += 61.0
    assert await store.renew_reservations(a, [r3], 60.0) == [r3.id]
    assert (await store.reserve(a, "photos", 7.0, "w5", 60.0)).credits == 7.0
    # The next day (UTC) starts afresh; a total budget does not.
    t = await store.reserve(a, "all", 20.0, "w", 60.0)
    await store.settle(a, t, 20.0)
    clock.now = epoch(2026, 12, 7, 0, 1)
    budgets = {b.name: b for b in await store.budgets(a)}
    assert budgets["photos"].spent == 0.0 and budgets["photos"].period_key == "2026-12-07"
    assert budgets["all"].spent == 20.0 and budgets["all"].period_key == "total"
    # Raising the credits keeps what was spent.
    await store.set_budget(a, "all", 30.0, "total")
    assert {b.name: b for b in await store.budgets(a)}["all"].remaining == 10.0
    assert await store.delete_budget(a, "all")
    assert [b.name for b in await store.budgets(a)] == ["photos"]
    await store.close()


@pytest.mark.parametrize(
    "when",
    [
        epoch(2024, 2, 29, 23, 59),
        epoch(2000, 3, 1),
        epoch(2100, 2, 28, 12),
        epoch(1999, 12, 31, 23, 59),
        epoch(2026, 1, 1),
    ],
)
async def test_periods_are_the_same_dates_in_lua_and_python(redis_server: RedisServer, when: float) -> None:
    from vance_provider.core.account.redis_store import RedisStore

    store = RedisStore(redis_server.url, clock=lambda: when)
    for period in ("day", "month"):
        state = await store.set_budget(f"periods-{when}".replace(".", "-"), f"p-{period}", 1.0, period)
        assert state.period_key == period_key(period, when)
    await store.close()


def test_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.delenv("VANCE_STATE_DIR", raising=False)
    monkeypatch.delenv("VANCE_ACCOUNT_STORE", raising=False)
    local = open_store()
    assert isinstance(local, SqliteStore) and local.path == tmp_path / "vance" / "account.sqlite3"
    assert isinstance(open_store("none"), MemoryStore)
    assert isinstance(open_store(f"sqlite://{tmp_path}/x.db"), SqliteStore)
    monkeypatch.setenv("VANCE_ACCOUNT_STORE", "redis://:pw@127.0.0.1:1/0")
    chosen = open_store()
    assert type(chosen).__name__ == "RedisStore" and "pw" not in repr(chosen)
    for url in (
        "postgresql://u:pw@db:5432/airflow",
        "postgres://u:pw@db/x",
        "postgresql+psycopg2://u:pw@db/x",
    ):
        chosen = open_store(url)
        assert type(chosen).__name__ == "PostgresStore" and "pw" not in repr(chosen), url
    with pytest.raises(ConfigurationError) as bad:
        open_store("mongodb://user:secret@host/db")
    assert "secret" not in str(bad.value)


async def test_a_faster_rate_learned_applies_to_the_next_request(store: Any, api_key: str) -> None:
    assert (await store.take_request(api_key, DEFAULT, 1.0, 1)).granted  # the default: 1 s to the next
    await store.learn_rate(api_key, 100, 10.0, None)  # ten a second
    assert (await store.take_request(api_key, DEFAULT, 1.0, 1)).wait == pytest.approx(0.1)
    await store.close()


async def test_free_slots_go_to_the_waiting_holder_with_the_fewest(store: Any, api_key: str) -> None:
    """Free slots go, one at a time, to the waiting holder that holds the fewest (the longest
    waiting among equals): a holder at its share does not take a freed slot from one below it."""
    a, clock = api_key, store.clock
    mine = [await store.acquire_slot(a, "big", 30.0, 4) for _ in range(4)]
    assert all(isinstance(lease, SlotLease) for lease in mine)
    assert isinstance(await store.acquire_slot(a, "small", 30.0, 4), float)  # full: "small" waits
    assert [h for h, _ in (await store.slot_state(a, 4)).waiting] == ["small"]
    await store.release_slot(a, mine[0].id)
    # "big" holds 3, "small" none and waits: the free slot is not for "big", though it asks first.
    assert isinstance(await store.acquire_slot(a, "big", 30.0, 4), float)
    taken = await store.acquire_slot(a, "small", 30.0, 4)
    assert isinstance(taken, SlotLease) and taken.holder == "small"
    state = await store.slot_state(a, 4)
    assert (state.held_by("big"), state.held_by("small")) == (3, 1)
    assert [h for h, _ in state.waiting] == ["big"]  # a grant ends a holder's wait
    # Two free slots and "small" (1) waiting behind "big" (2): one for each.
    assert isinstance(await store.acquire_slot(a, "small", 30.0, 4), float)  # full again: waits
    await store.release_slot(a, mine[1].id)
    await store.release_slot(a, mine[2].id)
    clock.now += 0.5
    assert isinstance(await store.acquire_slot(a, "big", 30.0, 4), SlotLease)  # 1 + 1 ahead < 2 free
    assert isinstance(await store.acquire_slot(a, "big", 30.0, 4), float)  # 2 vs 1: "small" first
    assert isinstance(await store.acquire_slot(a, "small", 30.0, 4), SlotLease)
    state = await store.slot_state(a, 4)
    assert (state.held_by("big"), state.held_by("small"), state.in_use) == (2, 2, 4)
    # At an equal share, a holder takes back the slot it freed at once.
    assert isinstance(await store.acquire_slot(a, "small", 30.0, 4), float)
    await store.release_slot(a, mine[3].id)
    assert isinstance(await store.acquire_slot(a, "big", 30.0, 4), SlotLease)
    await store.close()


async def test_among_equal_holders_the_longest_waiting_goes_first(store: Any, api_key: str) -> None:
    a, clock = api_key, store.clock
    x = await store.acquire_slot(a, "x", 30.0, 1)
    assert isinstance(x, SlotLease)
    assert isinstance(await store.acquire_slot(a, "early", 30.0, 1), float)
    clock.now += 1.0
    assert isinstance(await store.acquire_slot(a, "late", 30.0, 1), float)
    assert [h for h, _ in (await store.slot_state(a, 1)).waiting] == ["early", "late"]
    await store.release_slot(a, x.id)
    assert isinstance(await store.acquire_slot(a, "late", 30.0, 1), float)  # "early" came first
    assert isinstance(await store.acquire_slot(a, "x", 30.0, 1), float)  # 0 slots, but not waiting first
    assert isinstance(await store.acquire_slot(a, "early", 30.0, 1), SlotLease)
    await store.close()


async def test_a_waiting_holder_that_stops_asking_stops_counting(store: Any, api_key: str) -> None:
    """A killed worker's wait ends ``wait_ttl`` after it last asked: the others take the slots."""
    a, clock = api_key, store.clock
    held = [await store.acquire_slot(a, "alive", 30.0, 2, 2.0) for _ in range(2)]
    assert isinstance(await store.acquire_slot(a, "killed", 30.0, 2, 2.0), float)
    await store.release_slot(a, held[0].id)
    assert isinstance(await store.acquire_slot(a, "alive", 30.0, 2, 2.0), float)  # "killed" waits
    clock.now += 1.5
    assert isinstance(await store.acquire_slot(a, "alive", 30.0, 2, 2.0), float)  # asks again
    assert [h for h, _ in (await store.slot_state(a, 2)).waiting] == ["killed", "alive"]
    clock.now += 0.6  # 2.1 s since "killed" last asked; "alive" asked 0.6 s ago
    assert [h for h, _ in (await store.slot_state(a, 2)).waiting] == ["alive"]
    assert isinstance(await store.acquire_slot(a, "alive", 30.0, 2, 2.0), SlotLease)
    await store.close()


async def test_request_slots_are_taken_ahead_and_several_at_once(store: Any, api_key: str) -> None:
    """``count`` slots paced as single grants are, once the last is at most ``ahead`` seconds away."""
    a, clock = api_key, store.clock
    now = clock.now
    grant = await store.take_request(a, DEFAULT, 1.0, 1, 3, 2.5)  # one a second: now, +1, +2
    assert grant.granted and grant.wait == 0.0
    assert [t - now for t in grant.slots] == pytest.approx([0.0, 1.0, 2.0])
    refused = await store.take_request(a, DEFAULT, 1.0, 1, 1, 0.5)  # the next is at +3
    assert not refused.granted and refused.wait == pytest.approx(2.5)  # until it is 0.5 s away
    # Five asked, four fit within 3.5 s (+3 to +6): not before +6 is 3.5 s away, then all four.
    refused = await store.take_request(a, DEFAULT, 1.0, 1, 5, 3.5)
    assert not refused.granted and refused.wait == pytest.approx(2.5)
    clock.now += 2.5
    grant = await store.take_request(a, DEFAULT, 1.0, 1, 5, 3.5)
    assert [t - now for t in grant.slots] == pytest.approx([3.0, 4.0, 5.0, 6.0])
    assert grant.wait == pytest.approx(0.5)
    await store.learn_rate(a, None, None, 10.0)  # a 429: nothing for 10 s
    grant = await store.take_request(a, DEFAULT, 1.0, 1, 2, 20.0)
    assert [t - now for t in grant.slots] == pytest.approx([12.5, 13.5])
    await store.close()


async def test_a_window_the_service_counted_is_spent_at_once_then_its_end_is_awaited(
    store: Any, api_key: str
) -> None:
    """What an answer said a window has left goes unpaced, across callers; then nothing goes until
    a guard after the window's end, one request goes first (paced), and its answer's newer window
    is spent at once less what was granted since (it may not have reached the service yet). A 429
    ends the window's count; so does a window opened by a request granted well before the last
    one ended (the clocks disagree)."""
    a, clock = api_key, store.clock
    start = clock.now
    await store.learn_rate(a, 60, 60.0, None)  # one a second, paced
    await store.learn_rate(a, 60, 60.0, None, (start + 30.0, 12, 30.0, None))  # 12 left, 30 s to go
    grants = [await store.take_request(a, DEFAULT, 1.0, 1, 5, 0.1) for _ in range(3)]
    assert [len(g.slots) for g in grants] == [5, 5, 2]
    assert all(t == start for g in grants for t in g.slots)  # all at once, none paced
    refused = await store.take_request(a, DEFAULT, 1.0, 1, 1, 0.1)
    assert not refused.granted and refused.wait == pytest.approx(30.0 + 1.6 - 0.1)  # its end + guard
    # An older window's word changes nothing; the same window's can only lower what is left.
    await store.learn_rate(a, None, None, None, (start - 30.0, 59, 1.0, None))
    assert not (await store.take_request(a, DEFAULT, 1.0, 1, 1, 0.1)).granted
    clock.now = start + 31.6
    probe = await store.take_request(a, DEFAULT, 1.0, 1, 3, 1.5)
    assert [t - start for t in probe.slots] == pytest.approx([31.6, 32.6])  # paced again
    await store.learn_rate(a, None, None, None, (start + 90.0, 59, 58.4, start + 31.6))  # the first's answer
    burst = await store.take_request(a, DEFAULT, 1.0, 1, 100, 0.1)
    assert len(burst.slots) == 59 - 1  # less the other one granted since the guard before the end
    assert not (await store.take_request(a, DEFAULT, 1.0, 1, 1, 0.1)).granted
    # A window counted, then lowered by a later answer of the same window, then a 429: paced.
    clock.now = start + 92.0
    await store.learn_rate(a, None, None, None, (start + 150.0, 40, 58.0, None))
    await store.learn_rate(a, None, None, None, (start + 150.0, 3, 57.0, None))
    assert len((await store.take_request(a, DEFAULT, 1.0, 1, 10, 0.1)).slots) == 3
    # A request granted well before the counted window's end (+150) opens the next one: the
    # clocks disagree, and nothing granted since is counted, so that window is paced.
    await store.learn_rate(a, None, None, None, (start + 210.0, 50, 59.0, start + 92.0))
    grant = await store.take_request(a, DEFAULT, 1.0, 1, 10, 1.5)
    assert [t - start for t in grant.slots] == pytest.approx([92.0, 93.0])
    clock.now = start + 100.0
    await store.learn_rate(a, None, None, None, (start + 270.0, 50, 59.0, None))
    await store.learn_rate(a, None, None, 5.0)  # refused all the same: the count was wrong
    assert not (await store.take_request(a, DEFAULT, 1.0, 1, 1, 50.0)).granted  # the window is spent
    clock.now = start + 160.6  # its end (+159) and the guard
    grant = await store.take_request(a, DEFAULT, 1.0, 1, 3, 2.5)
    assert [t - start for t in grant.slots] == pytest.approx([160.6, 161.6, 162.6])
    await store.close()


async def test_a_window_first_seen_just_before_its_end_still_guards_what_was_granted_then(
    store: Any, api_key: str
) -> None:
    """The first answer came 0.05 s before its window's end, so the window is learned as 0.05 s
    long: the requests granted in those last moments may reach the service in the next window,
    and the next window's count goes without them (a tenth of 0.05 s would guard nothing)."""
    a, clock = api_key, store.clock
    start = clock.now
    await store.learn_rate(a, 20, 0.05, None, (start + 0.05, 19, 0.05, start))
    clock.now = start + 0.01
    late = await store.take_request(a, DEFAULT, 1.0, 1, 8, 0.1)
    assert len(late.slots) == 8 and all(t == start + 0.01 for t in late.slots)  # at once
    clock.now = start + 0.04
    (opener,) = (await store.take_request(a, DEFAULT, 1.0, 1, 1, 0.1)).slots
    clock.now = start + 0.06  # its answer, from the next window: the first word of it
    await store.learn_rate(a, 20, 1.95, None, (start + 2.05, 19, 1.99, opener))
    rest = await store.take_request(a, DEFAULT, 1.0, 1, 40, 0.1)
    assert len(rest.slots) == 19 - 8
    await store.close()
