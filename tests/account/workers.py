"""Worker processes for the multi-process account tests (spawned: each a fresh interpreter).

Each opens the account itself, as a real worker would, and reports through a queue."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

from vance_provider.core.account import (
    AccountStoreUnavailableError,
    BudgetExhaustedError,
    Rate,
    account_id,
    open_account,
)

BASE_URL = "https://api.vanceai.test"


def account_of(key: str) -> str:
    """The account id the workers' accounts have."""
    return account_id(BASE_URL, key)


Queue = Any  # multiprocessing queues and synchronization objects: not generic in typeshed


def budget_worker(url: str, key: str, barrier: Any, credits: float, out: Queue) -> None:
    """Reserve ``credits`` again and again until refused; settle three reservations of four and
    release the fourth (a failed job). Reports the credits settled."""

    async def run() -> float:
        settled, n = 0.0, 0
        async with open_account(BASE_URL, key, url, budget="shared") as account:
            barrier.wait()
            while True:
                try:
                    reservation = await account.reserve(credits)
                except BudgetExhaustedError:
                    return settled
                n += 1
                if n % 4 == 0:
                    await account.release(reservation)
                else:
                    await account.settle(reservation, credits)
                    settled += credits

    out.put(asyncio.run(run()))


def slot_worker(
    url: str, key: str, barrier: Any, lock: Any, inside: Any, peak: Any, tasks: int, rounds: int, out: Queue
) -> None:
    """``tasks`` coroutines each take a slot ``rounds`` times; while holding it they count
    themselves in the shared ``inside`` counter and record its ``peak``."""

    async def one(account: Any) -> int:
        done = 0
        for _ in range(rounds):
            async with account.slot():
                with lock:
                    inside.value += 1
                    peak.value = max(peak.value, inside.value)
                await asyncio.sleep(0.002)
                with lock:
                    inside.value -= 1
            done += 1
        return done

    async def run() -> int:
        async with open_account(BASE_URL, key, url, poll=0.02) as account:
            barrier.wait()
            return sum(await asyncio.gather(*(one(account) for _ in range(tasks))))

    out.put(asyncio.run(run()))


def holding_worker(url: str, key: str, ttl: float, credits: float, held: Any) -> None:
    """Take two slots and reserve credits, say so, then hold them (renewing) until killed."""

    async def run() -> None:
        account = open_account(
            BASE_URL, key, url, budget="shared", slot_ttl=ttl, reservation_ttl=ttl, holder="doomed"
        )
        await account.acquire_slot()
        await account.acquire_slot()
        await account.reserve(credits)
        held.set()
        while True:
            await asyncio.sleep(3600)

    asyncio.run(run())


def rate_worker(
    url: str, key: str, barrier: Any, count: int, limit: int, window: float, out: Queue, concurrent: int = 1
) -> None:
    """Learn ``limit``/``window``, then take ``count`` requests from each of ``concurrent`` calls at
    once; report each grant's time (store clock) and when the call returned (this machine's clock,
    which the store's is for SQLite and a Redis server on this machine)."""

    async def one(account: Any) -> list[tuple[float, float]]:
        return [(await account.acquire_request(), time.time()) for _ in range(count)]

    async def run() -> list[tuple[float, float]]:
        async with open_account(BASE_URL, key, url, default_rate=Rate(limit, window)) as account:
            await account.learn(limit, window)
            barrier.wait()
            calls = await asyncio.gather(*(one(account) for _ in range(concurrent)))
            return [grant for call in calls for grant in call]

    out.put(asyncio.run(run()))


def blocked_worker(url: str, key: str, go: Any, out: Queue) -> None:
    """Wait for ``go`` (a 429 was published), then take one request; report its grant time."""

    async def run() -> float:
        async with open_account(BASE_URL, key, url, default_rate=Rate(100, 1.0)) as account:
            go.wait()
            return await account.acquire_request()

    out.put(asyncio.run(run()))


def spawn() -> Any:
    """The multiprocessing context the tests use: fresh interpreters, as separate workers are."""
    return mp.get_context("spawn")


def collect(out: Queue, processes: list[Any], timeout: float = 120.0) -> list[Any]:
    """One result per process; fails if one died or hung."""
    results, deadline = [], time.monotonic() + timeout
    for _ in processes:
        results.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
    for p in processes:
        p.join(timeout=max(0.1, deadline - time.monotonic()))
        assert p.exitcode == 0, f"worker {p.pid} exited with {p.exitcode}"
    return results


def store_down_worker(url: str, key: str, ready: Any, stopped: Any, back: Any, out: Queue) -> None:
    """Spend 1 credit; once the store is stopped, try to reserve (refused), send requests and take
    a slot (per process); once it is back, wait to be account-wide again. Reports what it saw."""
    import logging

    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logger = logging.getLogger("vance_provider.account")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)

    async def run() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with open_account(BASE_URL, key, url, budget="shared", recheck_after=0.05) as account:
            await account.settle(await account.reserve(1), 1)
            ready.wait()
            stopped.wait()
            seen["refused"] = 0
            for _ in range(3):
                try:
                    await account.reserve(1)
                except AccountStoreUnavailableError:
                    seen["refused"] += 1
            for _ in range(3):
                await account.acquire_request()
            lease = await account.acquire_slot()
            seen["fallback_slot"] = lease.fallback
            await account.release(lease)
            seen["warnings_while_down"] = len(warnings)
            ready.wait()  # the parent starts the store again after every worker has seen it down
            back.wait()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                lease = await account.acquire_slot()
                await account.release(lease)
                if not lease.fallback:
                    break
                await asyncio.sleep(0.02)
            seen["recovered"] = not lease.fallback
            seen["warnings"] = len(warnings)
        return seen

    out.put(asyncio.run(run()))
