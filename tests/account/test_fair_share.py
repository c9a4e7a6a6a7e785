"""Two workers on one account (two accounts on one store, as two processes would be): a slot
freed by the worker holding the most goes to the one holding fewer, though the first asks first.

Each step waits for the store's state (who holds, who waits), never for a time to pass."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vance_provider.core.account import Account, MemoryStore, SlotState, open_account

from .workers import BASE_URL


async def until(account: Account, check: Any, what: str, deadline: float = 60.0) -> SlotState:
    """The store's slot state once ``check(state)`` holds; fails past ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        state = await account.slot_state()
        if check(state):
            return state
        assert time.monotonic() < end, f"timed out waiting for {what}: {state}"
        await asyncio.sleep(0.01)


def waiting(state: SlotState) -> set[str]:
    return {h for h, _ in state.waiting}


async def test_a_freed_slot_goes_to_the_worker_holding_fewer(store_url: str, api_key: str) -> None:
    # wait_ttl: a long one, so a worker slowed by a loaded machine never stops counting as waiting
    options = {"poll": 0.01, "wait_ttl": 60.0, "max_jobs": 4}
    async with (
        open_account(BASE_URL, api_key, store_url, **options) as first,
        open_account(BASE_URL, api_key, store_url, **options) as second,
    ):
        held = [await first.acquire_slot("first") for _ in range(4)]  # all four, before "second" asks
        # Both want more: a task of each waits for a slot (the others queue behind it).
        wants = [asyncio.create_task(first.acquire_slot("first")) for _ in range(4)]
        wants += [asyncio.create_task(second.acquire_slot("second")) for _ in range(4)]
        takers = []
        for lease in held:
            await until(first, lambda s: s.in_use == 4 and waiting(s) == {"first", "second"}, "both waiting")
            before = await first.slot_state()
            await first.release_slot(lease)  # wakes "first"'s waiting task at once
            after = await until(first, lambda s: s.in_use == 4, "the freed slot to be taken")
            takers.append("first" if after.held_by("first") == before.held_by("first") else "second")
        # 3 vs 0: "second"; 2 vs 1: "second"; then 1 vs 2 and 1 vs 2: "first" takes its own back.
        assert takers == ["second", "second", "first", "first"]
        state = await first.slot_state()
        assert (state.held_by("first"), state.held_by("second")) == (2, 2)
        for task in wants:
            task.cancel()
        await asyncio.gather(*wants, return_exceptions=True)
        for task in wants:  # a lease a task got before its cancel is given back at close
            if not task.cancelled() and task.exception() is None:
                await (first if task.result().holder == "first" else second).release_slot(task.result())


async def test_two_holders_in_one_process_each_ask_for_themselves(store_url: str, api_key: str) -> None:
    """A holder refused (it holds its share) does not keep another holder of the same process, one
    that holds fewer, from asking the store: each holder's tasks queue apart."""
    async with open_account(BASE_URL, api_key, store_url, poll=0.01, wait_ttl=60.0, max_jobs=2) as account:
        rich = [await account.acquire_slot("rich") for _ in range(2)]
        other = open_account(BASE_URL, api_key, store_url, poll=0.01, wait_ttl=60.0)
        async with other:
            poor = asyncio.create_task(other.acquire_slot("poor"))  # waits, in another worker
            await until(account, lambda s: waiting(s) == {"poor"}, "'poor' to wait")
            await account.release_slot(rich[0])
            rich_again = asyncio.create_task(account.acquire_slot("rich"))  # refused: 1 vs 0
            # "rich" waits before "poor2" asks (two asks sent at once may reach the store either way)
            await until(account, lambda s: "rich" in waiting(s) or rich_again.done(), "'rich' to ask")
            also_poor = asyncio.create_task(account.acquire_slot("poor2"))  # this process, another holder
            got = await poor
            assert got.holder == "poor"
            await until(account, lambda s: waiting(s) >= {"rich", "poor2"}, "'rich' and 'poor2' to wait")
            # Both hold none now; "rich" has waited longer (it asked first): it goes first.
            await account.release_slot(rich[1])
            assert (await rich_again).holder == "rich"
            assert not also_poor.done()
            await other.release_slot(got)
            assert (await also_poor).holder == "poor2"
        assert not account._slot_queues  # no task asks any more: no holder's queue is kept


class SwallowingStore(MemoryStore):
    """A store whose client library swallows a cancel while it asks for a slot (it answers "not
    yet" instead), as asyncio's ``wait_for`` can on Python 3.11."""

    asking = asyncio.Event()

    async def acquire_slot(self, *args: Any, **kwargs: Any) -> Any:
        answer = await super().acquire_slot(*args, **kwargs)
        if isinstance(answer, float | int):  # refused: sit in the "network" until canceled
            self.asking.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                return 0.01  # the cancel is lost here
        return answer


async def test_a_canceled_wait_for_a_slot_ends_though_its_cancel_was_swallowed() -> None:
    account = Account("cancel-test", SwallowingStore(), max_jobs=1)
    async with account:
        held = await account.acquire_slot("worker")
        waiting_task = asyncio.create_task(account.acquire_slot("worker"))
        await SwallowingStore.asking.wait()
        waiting_task.cancel()
        done, _ = await asyncio.wait([waiting_task], timeout=30)
        assert done, "the canceled wait went on asking for a slot"
        assert waiting_task.cancelled()
        assert (await account.slot_state()).in_use == 1  # only the slot held before
        await account.release_slot(held)
