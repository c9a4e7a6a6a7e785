"""The simulator restarts like a real service: a batch interrupted on one life of it and resumed on
the next never mixes results up, because a restarted simulator never hands out an id again.

(With ids drawn from the fault seed, the restarted simulator repeated the first life's job ids,
and a resumed batch polling an old id found another input's job: 2 of 20 web outputs held
another input's result.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN, fast_config
from tests.core.helpers import charged_jobs, created_jobs
from vance_provider.core import AsyncVanceClient, BatchSpec, RetryPolicy, run_batch
from vance_provider.sim import SimulatorServer

N = 8
TOKENS = {"web": WEB_TOKEN, "open": OPEN_KEY}
FAST = RetryPolicy(max_attempts=4, initial=0.01, max_delay=0.05)


def _inputs(folder: Path) -> dict[str, tuple[int, int]]:
    """Inputs of distinct sizes and colours: an output shows which input it came from."""
    folder.mkdir(parents=True)
    sizes = {}
    for i in range(N):
        size = (20 + 3 * i, 14 + i)
        Image.new("RGB", size, (30 * i, 200 - 20 * i, 90)).save(folder / f"img{i}.png")
        sizes[f"img{i}"] = size
    return sizes


async def _interrupt(client: AsyncVanceClient, spec: BatchSpec, sim: SimulatorServer, jobs: int) -> None:
    """Run the batch until the service holds ``jobs`` jobs, then stop it (the run is killed)."""
    task = asyncio.create_task(run_batch(client, spec))
    while len(created_jobs(sim)) < jobs and not task.done():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("api", ["web", "open"])
async def test_a_batch_resumed_across_a_restart_keeps_every_result_its_own(
    api: str, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    sizes = _inputs(tmp_path / "in")
    spec = BatchSpec(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "upscale",
        {"scale": 2},
        max_concurrency=4,
        poll_interval=0.05,
        max_poll_interval=0.2,
        on_failure="continue",
        timeout=120,
    )
    # First life: no job ends (their time runs on the simulator's clock, which nobody moves), so
    # the run is interrupted with every job it sent in flight.
    first = SimulatorServer(fast_config(time_per_job=600.0)).start()
    port = first.port
    try:
        async with AsyncVanceClient(TOKENS[api], base_url=first.base_url, retry=FAST) as client:
            await _interrupt(client, spec, first, N // 2)
    finally:
        first.stop()
    first_ids = set(created_jobs(first))
    first_all = {r.created_job for r in first.state.requests if r.created_job} | set(first.state.web_uploads)
    assert len(first_ids) >= N // 2

    # Second life: the same address, a fresh state (a real service's restart keeps no jobs here).
    second = SimulatorServer(fast_config(), port=port).start()
    try:
        for _ in range(2):  # a job of the first life is unknown now: its item is redone on a rerun
            async with AsyncVanceClient(TOKENS[api], base_url=second.base_url, retry=FAST) as client:
                result = await run_batch(client, spec)
            if result.done == N:
                break
        second_ids = set(created_jobs(second))
        assert result.done == N, [(i.source, i.error) for i in result.items if i.state != "done"]
        # No id of the first life came back in the second.
        assert first_ids.isdisjoint(second_ids)
        assert first_all.isdisjoint(second_ids | set(second.state.web_uploads) | set(second.state.uploads))
        # Every output is its own input's result: twice its size, its colour.
        for item in result.items:
            stem = Path(item.source).stem
            assert item.output and item.job_id in second_ids
            with Image.open(item.output) as out, Image.open(item.source) as src:
                assert out.size == (2 * sizes[stem][0], 2 * sizes[stem][1]), (stem, out.size)
                centre = (out.width // 2, out.height // 2)
                got = out.convert("RGB").getpixel(centre)
                want = src.convert("RGB").getpixel((src.width // 2, src.height // 2))
                assert all(abs(a - b) <= 24 for a, b in zip(got, want, strict=True)), (stem, got, want)
        assert second.state.double_charges() == []
        assert set(charged_jobs(second)) <= second_ids
    finally:
        second.stop()
