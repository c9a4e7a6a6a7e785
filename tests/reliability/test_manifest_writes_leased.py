"""No manifest write outside the batch's lease (issue 25, after the fenced lease).

A stopped batch's late write (``StoppableBatch.stop`` after its run released the lease), a
trigger's ``on_kill`` (``cancel_manifest_jobs``), the operator's ``requeue_canceled`` and an older
trigger's ``record_killed`` (``record_canceled``) write only while holding the lease, and then only
over items whose job is still the one canceled. Each case puts a second run in the lease first;
credits are counted from the simulator's ledger; jobs are held until the test moves its clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import TOKENS, batch_spec
from tests.core.helpers import (
    charged_jobs,
    charges,
    created_jobs,
    held_clients,
    photo_inputs,
    release_held_jobs,
)
from vance_provider.core import VanceClient
from vance_provider.core.batch import cancel as cancel_module
from vance_provider.core.batch.cancel import (
    StoppableBatch,
    cancel_manifest_jobs,
    record_canceled,
    requeue_canceled,
)
from vance_provider.core.batch.runner import BatchRunner
from vance_provider.core.state.manifest import MANIFEST_NAME, Manifest
from vance_provider.sim import SimulatorServer

N = 3
HOLD = 600.0


@pytest.fixture
def held_sim(sim_factory: Callable[..., SimulatorServer]) -> SimulatorServer:
    return sim_factory(time_per_job=HOLD)


@pytest.fixture
def clients(held_sim: SimulatorServer) -> Iterator[Callable[[], VanceClient]]:
    yield from held_clients(TOKENS["open"], held_sim.base_url)  # the Open API: the one that can cancel


def inputs(tmp_path: Path) -> tuple[str, str]:
    src, dest = photo_inputs(tmp_path, N)
    return str(src), str(dest)


def stored(tmp_path: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["items"]
    return {r["source"]: r for r in rows}


def wait_for(check: Callable[[], bool]) -> None:
    import time

    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


class SecondRun:
    """A second run that takes the lease and has its jobs on the service (held)."""

    def __init__(self, client: VanceClient, spec: Any) -> None:
        self.client, self.runner = client, BatchRunner(client.aio, spec)
        self.work = client.run(self.runner.start())
        client.run(self.runner.submit_ahead(self.work))

    def finish(self) -> Any:
        return self.client.run(self.runner.run_window(self.work))


def test_a_late_stop_writes_nothing_while_a_second_run_holds_the_lease(
    held_sim: SimulatorServer,
    clients: Callable[[], VanceClient],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dest = inputs(tmp_path)
    spec = batch_spec(src, dest, max_concurrency=N)
    first_client = clients()
    batch = StoppableBatch(first_client.aio, spec)
    pool = ThreadPoolExecutor(1)
    first = pool.submit(first_client.run, batch.run())
    wait_for(lambda: len(created_jobs(held_sim)) == N and (tmp_path / "out" / MANIFEST_NAME).exists())
    wait_for(lambda: all(r["job_id"] for r in stored(tmp_path).values()))
    seen: dict[str, Any] = {}
    late_write = cancel_module.record_canceled

    async def second_run_takes_the_lease_first(*args: Any, **kwargs: Any) -> list[str]:
        # The first run's window has ended and released the lease; before its late write, a
        # second run takes the batch, submits the requeued items and records its jobs.
        seen["second"] = await asyncio.to_thread(SecondRun, clients(), spec)
        seen["manifest"] = stored(tmp_path)
        seen["wrote"] = await late_write(*args, **kwargs)
        return list(seen["wrote"])

    monkeypatch.setattr(cancel_module, "record_canceled", second_run_takes_the_lease_first)
    canceled = batch.stop_threadsafe()
    with pytest.raises(BaseException):  # noqa: B017 - the first run ends canceled, however it says so
        first.result(timeout=60)
    pool.shutdown()
    assert len(canceled) == N and seen["wrote"] == []
    assert stored(tmp_path) == seen["manifest"]  # the second run's records are intact
    second_jobs = {r["job_id"] for r in seen["manifest"].values()}
    assert not second_jobs & set(canceled) and len(second_jobs) == N
    with ThreadPoolExecutor(1) as other:
        done = other.submit(seen["second"].finish)
        release_held_jobs(held_sim, HOLD)
        assert done.result(timeout=60).done == N
    assert set(charged_jobs(held_sim)) == second_jobs and sum(charges(held_sim)) == N
    assert held_sim.state.double_charges() == []


def test_a_cancel_from_outside_leaves_the_lease_holders_jobs_alone(
    held_sim: SimulatorServer, clients: Callable[[], VanceClient], tmp_path: Path
) -> None:
    """A trigger's on_kill (cancel_manifest_jobs), the operator's requeue_canceled and an older
    trigger's record_killed, while another run holds the batch: nothing canceled, nothing written."""
    src, dest = inputs(tmp_path)
    spec = batch_spec(src, dest, max_concurrency=N)
    holder = SecondRun(clients(), spec)
    before = stored(tmp_path)
    jobs = [r["job_id"] for r in before.values()]
    manifest_url = str(tmp_path / "out" / MANIFEST_NAME)
    outsider = clients()

    def loaded() -> Manifest:
        return Manifest(manifest_url).load()

    assert outsider.run(cancel_manifest_jobs(outsider.aio, loaded(), wait=0.0)) == []
    assert outsider.run(requeue_canceled(outsider.aio, loaded(), wait=0.0)) == []
    assert outsider.run(record_canceled(loaded(), jobs, wait=0.0)) == []
    assert stored(tmp_path) == before
    assert all(held_sim.state.jobs[j].status != "canceled" for j in jobs)
    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(holder.finish)
        release_held_jobs(held_sim, HOLD)
        assert done.result(timeout=60).done == N
    assert sum(charges(held_sim)) == N and held_sim.state.double_charges() == []


def test_a_late_record_after_another_run_finished_changes_only_its_own_jobs(
    held_sim: SimulatorServer, clients: Callable[[], VanceClient], tmp_path: Path
) -> None:
    """The lease is free again, but a later run has resubmitted the items: a compare-and-set on the
    job id leaves them as that run left them."""
    src, dest = inputs(tmp_path)
    spec = batch_spec(src, dest, max_concurrency=N)
    stale = Manifest(str(tmp_path / "out" / MANIFEST_NAME))
    client = clients()
    release_held_jobs(held_sim, HOLD)
    assert client.run_batch(spec).done == N
    old_jobs = ["job-of-an-earlier-run-1", "job-of-an-earlier-run-2"]
    before = stored(tmp_path)
    assert client.run(record_canceled(stale, old_jobs, wait=0.0)) == []
    assert stored(tmp_path) == before and {r["state"] for r in before.values()} == {"done"}
    one = next(iter(before.values()))
    assert client.run(record_canceled(stale, [one["job_id"]], wait=0.0)) == []  # done: left alone
    assert stored(tmp_path) == before
