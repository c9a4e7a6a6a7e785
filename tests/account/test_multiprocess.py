"""Many worker processes on one account: budgets, slots and the request rate hold account-wide,
and a worker killed with SIGKILL gives back what it held once its leases expire.

Every assertion is on counted, observable state (the store's, or counters the workers share);
no test passes or fails by how fast something ran."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from vance_provider.core.account import open_account

from . import workers
from .workers import BASE_URL

pytestmark = pytest.mark.slow


def until(check: Any, deadline: float = 60.0, what: str = "a condition") -> Any:
    """Poll ``check()`` until it gives something true; fail past ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _set_budget(url: str, key: str, credits: float, period: str = "total") -> None:
    async with open_account(BASE_URL, key, url) as account:
        await account.set_budget("shared", credits, period)


async def _budget(url: str, key: str) -> Any:
    async with open_account(BASE_URL, key, url) as account:
        return await account.get_budget("shared")


async def _slots(url: str, key: str) -> Any:
    async with open_account(BASE_URL, key, url) as account:
        return await account.slot_state()


def test_a_budget_is_never_exceeded_by_eight_processes(store_url: str, api_key: str) -> None:
    run(_set_budget(store_url, api_key, 100))
    ctx, n = workers.spawn(), 8
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=workers.budget_worker, args=(store_url, api_key, barrier, 3.0, out))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    settled = workers.collect(out, procs)
    state = run(_budget(store_url, api_key))
    # 100 credits in reservations of 3: exactly 33 are charged, whatever the interleaving (the
    # last worker refused saw nothing reserved by others, so fewer than 3 credits were left).
    assert sum(settled) == state.spent == 99.0
    assert state.reserved == 0 and state.remaining == 1.0
    assert sum(1 for s in settled if s) >= 2, "the workers did not contend"


def test_slots_never_exceed_the_capacity(store_url: str, api_key: str) -> None:
    async def set_capacity() -> None:
        async with open_account(BASE_URL, api_key, store_url) as account:
            await account.set_capacity(3)

    run(set_capacity())
    ctx, n, tasks, rounds = workers.spawn(), 6, 2, 8
    barrier, out, lock = ctx.Barrier(n), ctx.Queue(), ctx.Lock()
    inside, peak = ctx.Value("i", 0, lock=False), ctx.Value("i", 0, lock=False)
    procs = [
        ctx.Process(
            target=workers.slot_worker,
            args=(store_url, api_key, barrier, lock, inside, peak, tasks, rounds, out),
        )
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    done = workers.collect(out, procs)
    assert sum(done) == n * tasks * rounds
    assert 1 <= peak.value <= 3
    assert inside.value == 0
    assert run(_slots(store_url, api_key)).in_use == 0  # every slot was given back


def test_a_killed_worker_gives_back_its_slots_and_credits(store_url: str, api_key: str) -> None:
    run(_set_budget(store_url, api_key, 50))
    ctx = workers.spawn()
    held = ctx.Event()
    ttl = 1.5
    proc = ctx.Process(target=workers.holding_worker, args=(store_url, api_key, ttl, 20.0, held))
    proc.start()
    try:
        assert held.wait(60), "the worker did not take its slots"
        first = run(_slots(store_url, api_key))
        assert first.in_use == 2 and {h for _, h, _ in first.leases} == {"doomed"}
        assert run(_budget(store_url, api_key)).reserved == 20.0
        # While it lives, its heartbeat renews the leases: their expiry moves forward.
        expiry = max(e for _, _, e in first.leases)
        until(
            lambda: min(e for _, _, e in run(_slots(store_url, api_key)).leases) > expiry,
            what="the leases to be renewed",
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        # Within the lease time, the slots and the reservation come back; nothing was spent.
        until(lambda: run(_slots(store_url, api_key)).in_use == 0, what="the slots to expire")
        state = until(
            lambda: (b := run(_budget(store_url, api_key))).reserved == 0 and b, what="the credits to return"
        )
        assert state.spent == 0 and state.remaining == 50.0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


@pytest.mark.parametrize("concurrent", [1, 4])
def test_processes_pacing_by_a_shared_rate_never_exceed_it_in_any_window(
    store_url: str, api_key: str, concurrent: int
) -> None:
    """With ``concurrent`` calls waiting in each process, each takes slots for several at once
    (ahead of time): the account's pace holds all the same, and no call returns before its slot."""
    limit, window, n, count = 10, 0.5, 4, 8
    ctx = workers.spawn()
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(
            target=workers.rate_worker,
            args=(store_url, api_key, barrier, count, limit, window, out, concurrent),
        )
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [grant for grants in workers.collect(out, procs) for grant in grants]
    grants = sorted(at for at, _ in results)
    assert len(grants) == n * count * concurrent
    # Counted on the store's clock: in every window [t, t + window), at most `limit` grants.
    for i, start in enumerate(grants):
        inside = sum(1 for t in grants[i:] if t < start + window)
        assert inside <= limit, f"{inside} requests within {window} s of {start}"
    # Never early: each call returned at or after its slot (one clock: the store is on this machine).
    assert all(returned >= at - 1e-3 for at, returned in results), min(r - a for a, r in results)


def test_a_429_blocks_every_process_until_retry_after(store_url: str, api_key: str) -> None:
    ctx, n = workers.spawn(), 4
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=workers.blocked_worker, args=(store_url, api_key, go, out)) for _ in range(n)]
    for p in procs:
        p.start()

    async def refused() -> float:
        async with open_account(BASE_URL, api_key, store_url) as account:
            state = await account.rate_state()
            await account.learn(100, 1.0, retry_after=1.0)
            after = await account.rate_state()
            assert after.blocked_until >= state.now + 1.0
            return after.blocked_until

    blocked_until = run(refused())
    go.set()
    grants = workers.collect(out, procs)
    assert all(t >= blocked_until for t in grants), (grants, blocked_until)


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_a_store_opened_before_a_fork_works_in_the_child(store_url: str, api_key: str) -> None:
    """Airflow's executors and Celery's prefork pool fork workers: the child gets its own
    connection, not the parent's, and leaves the parent's working."""
    import multiprocessing as mp

    from vance_provider.core.account import open_store

    run(_set_budget(store_url, api_key, 10))
    store: Any = open_store(store_url)
    opened, open_one = [], store._open
    store._open = lambda: opened.append(os.getpid()) or open_one()
    run(store.budgets(workers.account_of(api_key)))  # the parent's connection is open

    def child() -> None:
        async def go() -> None:
            r = await store.reserve(workers.account_of(api_key), "shared", 3, "child", 60.0)
            await store.settle(workers.account_of(api_key), r, 3)

        asyncio.run(go())

    proc = mp.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    (state,) = run(store.budgets(workers.account_of(api_key)))
    assert state.spent == 3
    assert opened == [os.getpid()], "the child closed the parent's connection: it had to reconnect"
    run(store.close())
