"""The batch engine on the account's shared state: several clients (as several workers would)
on one account through one store share its job cap, its named budgets and its rate."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import fast_config, image_bytes
from tests.core.helpers import charged_jobs, count_status
from vance_provider.core import AsyncVanceClient, BatchSpec
from vance_provider.core.account import UnknownBudgetError, set_budget
from vance_provider.core.api.errors import BudgetExceededError
from vance_provider.core.batch.runner import run_batch
from vance_provider.core.transport.retry import RetryPolicy
from vance_provider.sim import DEMO_OPEN_KEY, SimulatorServer

FAST = RetryPolicy(max_attempts=3, initial=0.01, max_delay=0.05)


def shards(tmp_path: Path, k: int, per_shard: int) -> list[tuple[Path, Path]]:
    """``k`` shards of distinct photos, each with its own destination."""
    made = []
    for s in range(k):
        src = tmp_path / f"in{s}"
        src.mkdir()
        for i in range(per_shard):
            (src / f"p{i}.jpg").write_bytes(image_bytes(16 + s * per_shard + i, 12))
        made.append((src, tmp_path / f"out{s}"))
    return made


def on_photos(src: Path, dst: Path, owner: str | None = None) -> BatchSpec:
    """A batch drawing on the account budget "photos", as much as it has left."""
    return BatchSpec(
        str(src),
        str(dst),
        "upscale",
        {"scale": 2},
        max_concurrency=3,
        poll_interval=0.02,
        account_budget="photos",
        on_insufficient_credits="partial",
        owner=owner,
    )


async def run_workers(
    sim: SimulatorServer, store: str, specs: list[BatchSpec], **options: object
) -> list[object]:
    """One client per worker (its own rate gate and job limit), all on one account and store."""
    clients = [
        AsyncVanceClient(
            DEMO_OPEN_KEY, api="open", base_url=sim.base_url, retry=FAST, account_store=store, **options
        )
        for _ in specs
    ]
    try:
        return await asyncio.gather(*(run_batch(c, s) for c, s in zip(clients, specs, strict=True)))
    finally:
        for c in clients:
            await c.aclose()


def test_workers_share_the_account_job_cap(tmp_path: Path) -> None:
    # The account takes 3 jobs at once; each of three workers would keep 4 in flight on its own.
    sim = SimulatorServer(fast_config(max_concurrent_images=3, time_per_job=0.1)).start()
    try:
        specs = [
            BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, max_concurrency=4, poll_interval=0.02)
            for src, dst in shards(tmp_path, 3, 5)
        ]
        store = f"sqlite:///{tmp_path / 'account.db'}"
        results = asyncio.run(run_workers(sim, store, specs, account_max_jobs=3))
        assert all(r.done == 5 for r in results)  # type: ignore[attr-defined]
        assert count_status(sim, 429, "/api/v1/jobs") == 0  # no create refused for concurrency
        assert sorted(charged_jobs(sim).values()) == [1] * 15  # each paid once
    finally:
        sim.stop()


def test_a_named_budget_holds_across_workers(tmp_path: Path) -> None:
    sim = SimulatorServer(fast_config()).start()
    try:
        store = f"sqlite:///{tmp_path / 'account.db'}"
        set_budget(
            "photos",
            7,
            "total",
            api_base_url=sim.base_url + "/api/v1",
            api_key=DEMO_OPEN_KEY,
            store_url=store,
        )
        specs = [on_photos(src, dst) for src, dst in shards(tmp_path, 3, 4)]
        results = asyncio.run(run_workers(sim, store, specs))
        done = sum(r.done for r in results)  # type: ignore[attr-defined]
        assert done == 7 and sum(charged_jobs(sim).values()) == 7  # 12 wanted, the budget paid for 7
        skipped = [i for r in results for i in r.items if i.state == "skipped"]  # type: ignore[attr-defined]
        assert len(skipped) == 5 and all("budget" in (i.error or "") for i in skipped)
    finally:
        sim.stop()


def test_an_unknown_or_short_budget_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    sim = SimulatorServer(fast_config()).start()
    try:
        store = f"sqlite:///{tmp_path / 'account.db'}"
        ((src, dst),) = shards(tmp_path, 1, 3)
        spec = BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, account_budget="nope")
        with pytest.raises(UnknownBudgetError):
            asyncio.run(run_workers(sim, store, [spec]))
        set_budget(
            "small", 2, "total", api_base_url=sim.base_url + "/api/v1", api_key=DEMO_OPEN_KEY, store_url=store
        )
        spec = BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, account_budget="small")
        with pytest.raises(BudgetExceededError, match="budget 'small' has 2"):
            asyncio.run(run_workers(sim, store, [spec]))
        assert count_status(sim, 200, "/api/v1/jobs") == 0 and not charged_jobs(sim)
    finally:
        sim.stop()


def test_an_account_budget_needs_a_store(tmp_path: Path) -> None:
    sim = SimulatorServer(fast_config()).start()
    try:
        ((src, dst),) = shards(tmp_path, 1, 1)
        spec = BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, account_budget="photos")
        with pytest.raises(Exception, match="no account store is in use"):
            asyncio.run(run_workers(sim, "none", [spec]))
    finally:
        sim.stop()


def test_a_budget_is_not_spent_while_its_store_is_down(tmp_path: Path) -> None:
    from tests.servers import RedisServer, ServerNotAvailable
    from vance_provider.core.account import AccountStoreUnavailableError

    try:
        redis = RedisServer()
    except ServerNotAvailable as exc:
        pytest.skip(str(exc))
    sim = SimulatorServer(fast_config()).start()
    try:
        redis.start()
        set_budget(
            "photos",
            10,
            "total",
            api_base_url=sim.base_url + "/api/v1",
            api_key=DEMO_OPEN_KEY,
            store_url=redis.url,
        )
        redis.stop()
        ((src, dst),) = shards(tmp_path, 1, 3)
        spec = BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, account_budget="photos")
        with pytest.raises(AccountStoreUnavailableError) as refused:
            asyncio.run(run_workers(sim, redis.url, [spec]))
        assert "redis" in str(refused.value).lower() and DEMO_OPEN_KEY not in str(refused.value)
        assert count_status(sim, 200, "/api/v1/jobs") == 0 and not charged_jobs(sim)  # nothing sent
    finally:
        redis.close()
        sim.stop()


def test_a_batch_handed_to_another_process_keeps_its_jobs_credits_reserved(tmp_path: Path) -> None:
    """A deferrable batch: the worker submits and hands on, the triggerer collects. Its jobs in
    flight stay reserved in the account budget across the hand-off, so another worker cannot take
    those credits meanwhile: the budget of 4 pays for 4 jobs, not the 3 handed on plus 3 more."""
    from vance_provider.core.account import get_budgets
    from vance_provider.core.batch.window import hand_off, run_elsewhere

    sim = SimulatorServer(fast_config(time_per_job=600.0)).start()  # held until released below
    try:
        store = f"sqlite:///{tmp_path / 'account.db'}"
        conn = {"api_base_url": sim.base_url + "/api/v1", "api_key": DEMO_OPEN_KEY, "store_url": store}
        set_budget("photos", 4, "total", **conn)  # type: ignore[arg-type]
        (a_src, a_dst), (b_src, b_dst) = shards(tmp_path, 2, 3)

        async def in_a_process(work: object) -> object:
            async with AsyncVanceClient(
                DEMO_OPEN_KEY, api="open", base_url=sim.base_url, retry=FAST, account_store=store
            ) as client:
                return await work(client)  # type: ignore[operator]

        handed = asyncio.run(in_a_process(lambda c: hand_off(c, on_photos(a_src, a_dst, "run-a"))))
        assert len(handed.job_ids) == 3  # type: ignore[attr-defined]
        (photos,) = get_budgets(**conn)  # type: ignore[arg-type]
        assert photos.reserved == 3 and photos.spent == 0  # the worker has exited: still reserved

        sim.state.config.time_per_job = 0.05  # new jobs finish quickly
        deadline = time.monotonic() + 60
        while any(j.status != "processing" for j in sim.state.jobs.values()):  # out of the queue
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sim.state.clock.advance(600.0)  # and the held ones are done
        other = asyncio.run(in_a_process(lambda c: run_batch(c, on_photos(b_src, b_dst, "run-b"))))
        assert other.done == 1  # type: ignore[attr-defined]  # the one credit left
        collected = asyncio.run(in_a_process(lambda c: run_elsewhere(c, on_photos(a_src, a_dst, "run-a"))))
        assert collected.done == 3  # type: ignore[attr-defined]

        (photos,) = get_budgets(**conn)  # type: ignore[arg-type]
        assert photos.spent == 4 and photos.reserved == 0
        assert sum(charged_jobs(sim).values()) == 4
    finally:
        sim.stop()
