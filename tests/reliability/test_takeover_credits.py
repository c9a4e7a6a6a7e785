"""A run that takes a batch over reports only what the ledger charged it (issue 25, section 8).

The earlier run dies right after a download (web API: the download is the payment; Open API: the
job was paid for at its end), before its manifest records the result. The run that takes over
fetches that result again for free (web: "Duplicate downloads won't charge credits again"; Open
API: downloads are free): it must not count those credits as its own spend, but report them apart
(``credits_taken_over``), and the credit report must count each charge once. Credits are counted
from the simulator's ledger, split at the moment the second run starts (the simulator's clock); no
test waits for time to pass: jobs are held until the test moves the simulator's clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import TOKENS, batch_spec
from tests.core.helpers import charged_jobs, charges, held_clients, photo_inputs, release_held_jobs
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.core.batch.runner import BatchRunner
from vance_provider.core.reports.credits import records_from_manifests
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.sim import SimulatorServer

N = 3
HOLD = 600.0
VANCE = str(Path(sys.executable).parent / "vance")


class Killed(BaseException):
    """The process dies (kill -9): nothing after this point reaches storage."""


@pytest.fixture
def held_sim(sim_factory: Callable[..., SimulatorServer]) -> SimulatorServer:
    return sim_factory(time_per_job=HOLD)


@pytest.fixture
def clients(held_sim: SimulatorServer, api: str) -> Iterator[Callable[[], VanceClient]]:
    yield from held_clients(TOKENS[api], held_sim.base_url)


def inputs(tmp_path: Path) -> tuple[str, str]:
    src, dest = photo_inputs(tmp_path, N)
    return str(src), str(dest)


def die_after_first_download(client: VanceClient, spec: BatchSpec, sim: SimulatorServer) -> None:
    """A run that holds the lease, collects its first job (one at a time) and is killed right after
    the download, before the manifest records the result."""
    runner = BatchRunner(client.aio, spec)
    work = client.run(runner.start())
    client.run(runner.submit_ahead(work, limit=1))  # the first job, held on the service
    dead = False

    def drop_when_dead(write: Callable[[Any], None]) -> Callable[[Any], None]:
        def maybe(items: Any) -> None:
            if not dead:
                write(items)

        return maybe

    runner.manifest._write = drop_when_dead(runner.manifest._write)  # type: ignore[method-assign]
    runner.manifest._append = drop_when_dead(runner.manifest._append)  # type: ignore[method-assign]
    download = runner.client.download

    async def download_then_die(*args: Any, **kwargs: Any) -> Any:
        nonlocal dead
        await download(*args, **kwargs)
        dead = True
        raise Killed

    runner.client.download = download_then_die  # type: ignore[method-assign]
    end_held_jobs(sim)  # the first job ends; any other job it starts stays held
    with pytest.raises(BaseException) as died:
        client.run(runner.run_window(work))
    assert "Killed" in repr(died.value), repr(died.value)


def end_held_jobs(sim: SimulatorServer) -> None:
    """The jobs running now end; jobs created later are still held (unlike ``release_held_jobs``)."""
    deadline = time.monotonic() + 30
    while any(j.status == "queued" for j in list(sim.state.jobs.values())):
        assert time.monotonic() < deadline, "the simulator did not start the held jobs"
        time.sleep(0.01)
    sim.state.clock.advance(HOLD)


def wait_until_idle(sim: SimulatorServer) -> None:
    deadline = time.monotonic() + 30
    while any(j.status in ("queued", "processing") for j in list(sim.state.jobs.values())):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def status_looks(sim: SimulatorServer) -> list[Any]:
    return [
        r
        for r in list(sim.state.requests)
        if r.path.startswith("/api/v1/jobs/") or r.path == "/web_api/v1/progress"
    ]


def split_ledger(sim: SimulatorServer, at: float) -> tuple[float, float]:
    """Credits charged before ``at`` (the simulator's clock) and from then on."""
    entries = sim.state.charges()
    return sum(e.amount for e in entries if e.at < at), sum(e.amount for e in entries if e.at >= at)


def test_a_run_that_takes_over_counts_only_what_it_was_charged(
    api: str, held_sim: SimulatorServer, clients: Callable[[], VanceClient], tmp_path: Path
) -> None:
    src, dest = inputs(tmp_path)
    spec = batch_spec(src, dest, max_concurrency=1)
    die_after_first_download(clients(), spec, held_sim)
    assert sum(charges(held_sim)) == 1  # the first result was paid for, and nothing recorded it done
    stored = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["items"]
    assert "done" not in {i["state"] for i in stored}
    takeover_at = held_sim.state.clock.now()
    sent = len(held_sim.state.requests)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(clients().run_batch, batch_spec(src, dest, max_concurrency=4))
        if api == "open":
            # The jobs end only once the run has created (or replayed by their keys) the other two:
            # a job that ends between the takeover and the run's first sight of it cannot be told
            # from one that ended before (documented), so the test does not race that moment.
            deadline = time.monotonic() + 30
            while (
                sum(
                    1
                    for r in list(held_sim.state.requests)[sent:]
                    if r.method == "POST" and r.idempotency_key
                )
                < 2
            ):
                assert time.monotonic() < deadline and not other.done()
                time.sleep(0.01)
        release_held_jobs(held_sim, HOLD)
        result = other.result(timeout=60)
    before, during = split_ledger(held_sim, takeover_at)
    assert result.done == N and held_sim.state.double_charges() == []
    assert (before, during) == (1.0, 2.0)
    assert result.credits_spent == during and result.credits_taken_over == before
    summary = result.summary()
    assert summary["credits_spent"] == 2.0 and summary["credits_taken_over"] == 1.0
    # The manifest (what the credit report reads) holds each charged job once, as the ledger does.
    recorded = records_from_manifests([str(tmp_path / "out" / MANIFEST_NAME)])
    assert sorted(r.job_id for r in recorded) == sorted(charged_jobs(held_sim))
    assert sum(r.credits for r in recorded) == sum(charges(held_sim)) == N


def test_a_resumed_job_still_running_is_this_runs_spend(
    api: str, held_sim: SimulatorServer, clients: Callable[[], VanceClient], tmp_path: Path
) -> None:
    """The other side: jobs an earlier run created but that end (Open API) or are first downloaded
    (web API) during the run that took over are that run's spend."""
    src, dest = inputs(tmp_path)
    spec = batch_spec(src, dest, max_concurrency=N)
    first = clients()
    runner = BatchRunner(first.aio, spec)
    work = first.run(runner.start())
    first.run(runner.submit_ahead(work))  # every job created and recorded, all held
    runner.lease.abandon()  # killed: the jobs are left running
    takeover_at = held_sim.state.clock.now()
    looks = len(status_looks(held_sim))
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(clients().run_batch, batch_spec(src, dest, max_concurrency=N))
        deadline = time.monotonic() + 30
        while len(status_looks(held_sim)) < looks + N:  # it has seen every job running
            assert time.monotonic() < deadline
            time.sleep(0.01)
        release_held_jobs(held_sim, HOLD)
        result = other.result(timeout=60)
    before, during = split_ledger(held_sim, takeover_at)
    assert (before, during) == (0.0, N)
    assert result.credits_spent == N and result.credits_taken_over == 0
    assert held_sim.state.double_charges() == []


@pytest.mark.slow
def test_the_cli_says_what_was_taken_over_and_its_report_agrees_with_the_ledger(
    api: str, held_sim: SimulatorServer, clients: Callable[[], VanceClient], tmp_path: Path
) -> None:
    src, dest = inputs(tmp_path)
    die_after_first_download(clients(), batch_spec(src, dest, max_concurrency=1), held_sim)
    release_held_jobs(held_sim, HOLD)
    wait_until_idle(held_sim)
    # Charged before the CLI starts: the first result (downloaded), and on the Open API also any
    # job the first run had started meanwhile (it ended, and was paid for, before the CLI ran).
    before = sum(charges(held_sim))
    assert before >= 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("VANCE_") and k != "COLUMNS"}
    env.update(NO_COLOR="1", COLUMNS="200", VANCE_API_TOKEN=TOKENS[api], VANCE_BASE_URL=held_sim.base_url)
    run = subprocess.run(
        [VANCE, "enhance", src, dest, "--tool", "upscale", "--scale", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"taken over: {before:g} credits of results an earlier run had already paid for" in run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("│") and "3" in line)
    assert row.split("│")[4].strip() == f"{N - before:g}"  # the credits column: this run's spend only
    report = tmp_path / "usage.csv"
    run = subprocess.run(
        [VANCE, "report", "--out", str(report), "--manifest", dest],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"3 charge(s), 3 credits, written to {report}" in run.stdout
    assert sum(charges(held_sim)) == 3 and held_sim.state.double_charges() == []
