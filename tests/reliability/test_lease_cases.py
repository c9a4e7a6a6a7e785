"""Two runs of one batch can never both pay: each way the lease used to let a second run in, on
both APIs, credits counted from the simulator's ledger. No test waits for time to pass: the store's
clock is moved by ageing the lease object (its LastModified), the simulator's by its own clock.

- a paused holder that resumes after another run took over creates no job and says so;
- a worker whose clock runs ahead never takes over a live lease;
- a retry (another Airflow try) beside a zombie try is refused, not let in;
- a second run with its manifest elsewhere, on the same destination, is refused;
- after kill -9, a rerun on the same host goes ahead at once and pays nothing twice.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import image_bytes
from tests.core.conftest import TOKENS, batch_spec
from tests.core.helpers import charged_jobs, charges, created_jobs, held_clients, release_held_jobs
from tests.core.test_lease import age_object
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.core.api.errors import BatchLockedError
from vance_provider.core.batch.runner import BatchRunner
from vance_provider.core.state import lease as lease_module
from vance_provider.core.state.lease import LEASE_TTL, LeaseLostError, new_owner
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.sim import SimulatorServer

N = 6
HOLD = 600.0  # simulator seconds a job runs until the test moves the simulator's clock
LOCK = f"out/{MANIFEST_NAME}.lock"


@pytest.fixture
def held_sim(sim_factory: Callable[..., SimulatorServer]) -> SimulatorServer:
    """Jobs run until the test releases them (``release_held_jobs``)."""
    return sim_factory(time_per_job=HOLD)


@pytest.fixture
def clients(held_sim: SimulatorServer, api: str) -> Iterator[Callable[[], VanceClient]]:
    yield from held_clients(TOKENS[api], held_sim.base_url)


def on_s3(fs: Any, bucket: str) -> tuple[str, str]:
    for i in range(N):
        fs.pipe(f"{bucket}/in/p{i:02d}.jpg", image_bytes(16 + i, 12))
    return f"s3://{bucket}/in", f"s3://{bucket}/out"


def on_disk(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "in").mkdir()
    for i in range(N):
        (tmp_path / "in" / f"p{i:02d}.jpg").write_bytes(image_bytes(16 + i, 12))
    return str(tmp_path / "in"), str(tmp_path / "out")


class Holding:
    """A run that has taken the lease and has its first window of jobs on the service (held)."""

    def __init__(self, client: VanceClient, spec: BatchSpec) -> None:
        self.client, self.runner = client, BatchRunner(client.aio, spec)
        self.work = client.run(self.runner.start())
        client.run(self.runner.submit_ahead(self.work))

    def carry_on(self) -> Any:
        """The run goes on with its window (its process resumes)."""
        return self.client.run(self.runner.run_window(self.work))


def in_thread(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def paid_once(sim: SimulatorServer) -> None:
    assert sum(charges(sim)) == N and max(charged_jobs(sim).values()) == 1, charges(sim)


# --- a paused holder resumes -------------------------------------------------------------------------
def test_a_paused_holder_that_resumes_creates_no_job(
    api: str, held_sim: SimulatorServer, clients: Callable[[], VanceClient], s3: Any
) -> None:
    fs, so, bucket = s3
    src, dest = on_s3(fs, bucket)
    spec = batch_spec(src, dest, storage_options=so, max_concurrency=2)
    paused = Holding(clients(), spec)
    assert len(created_jobs(held_sim)) == 2
    age_object(bucket, LOCK, LEASE_TTL + 5)  # paused past the lease's life, by the store's clock
    other = in_thread(clients().run_batch, spec)  # takes over, resumes its two jobs, does the rest
    release_held_jobs(held_sim, HOLD)
    assert other.result(timeout=60).done == N
    jobs = created_jobs(held_sim)
    with pytest.raises(LeaseLostError, match="lost the batch lease") as lost:
        paused.carry_on()
    assert "nothing is paid twice" in str(lost.value)
    assert created_jobs(held_sim) == jobs and len(jobs) == N
    paid_once(held_sim)
    manifest = json.loads(fs.cat(f"{bucket}/out/{MANIFEST_NAME}"))
    assert {i["state"] for i in manifest["items"]} == {"done"}  # the resumed run wrote nothing over it


# --- clock skew --------------------------------------------------------------------------------------
class _ClockAhead:
    """The ``time`` module as a worker whose clock is ten minutes ahead sees it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + 600.0


def test_a_worker_whose_clock_is_ahead_never_takes_over_a_live_lease(
    api: str,
    held_sim: SimulatorServer,
    clients: Callable[[], VanceClient],
    s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, so, bucket = s3
    src, dest = on_s3(fs, bucket)
    spec = batch_spec(src, dest, storage_options=so, max_concurrency=2)
    holder = Holding(clients(), spec)
    age_object(bucket, LOCK, LEASE_TTL - 30)  # not renewed for a while, still live on the store
    with monkeypatch.context() as m:
        m.setattr(lease_module, "time", _ClockAhead())
        ahead = BatchRunner(clients().aio, spec)
        ahead.lease.clock = _ClockAhead().time
        with pytest.raises(BatchLockedError, match="being run by"):
            clients().run(ahead.run())
    assert len(created_jobs(held_sim)) == 2
    finish = in_thread(holder.carry_on)
    release_held_jobs(held_sim, HOLD)
    assert finish.result(timeout=60).done == N
    paid_once(held_sim)


# --- a retry beside a zombie -------------------------------------------------------------------------
def test_a_retry_beside_a_zombie_try_is_refused(
    api: str, held_sim: SimulatorServer, clients: Callable[[], VanceClient], s3: Any
) -> None:
    """Airflow's owner ids carry the try number: try 2 does not re-enter the lease of try 1."""
    fs, so, bucket = s3
    src, dest = on_s3(fs, bucket)
    ids = ("airflow", "dag", "task", "run", -1)
    spec = batch_spec(src, dest, storage_options=so, max_concurrency=2)
    zombie = Holding(clients(), BatchSpec(**{**vars(spec), "owner": new_owner(*ids, "try1")}))
    retry = BatchSpec(**{**vars(spec), "owner": new_owner(*ids, "try2")})
    with pytest.raises(BatchLockedError, match="being run by airflow:dag:task:run:-1:try1:"):
        clients().run_batch(retry)
    assert len(created_jobs(held_sim)) == 2
    finish = in_thread(zombie.carry_on)
    release_held_jobs(held_sim, HOLD)
    assert finish.result(timeout=60).done == N
    assert clients().run_batch(retry).credits_spent == 0  # once try 1 is over, try 2 finds it done
    paid_once(held_sim)


# --- another manifest path, same destination ---------------------------------------------------------
@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_second_run_with_its_manifest_elsewhere_is_refused(
    storage: str,
    api: str,
    held_sim: SimulatorServer,
    clients: Callable[[], VanceClient],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if storage == "s3":
        fs, so, bucket = request.getfixturevalue("s3")
        src, dest = on_s3(fs, bucket)
        elsewhere = f"s3://{bucket}/manifests/mine.json"
    else:
        so = None
        src, dest = on_disk(tmp_path)
        elsewhere = str(tmp_path / "manifests" / "mine.json")
    spec = batch_spec(src, dest, storage_options=so, max_concurrency=2)
    first = Holding(clients(), spec)
    with pytest.raises(BatchLockedError, match="being run by"):
        clients().run_batch(BatchSpec(**{**vars(spec), "manifest": elsewhere}))
    assert len(created_jobs(held_sim)) == 2
    finish = in_thread(first.carry_on)
    release_held_jobs(held_sim, HOLD)
    assert finish.result(timeout=60).done == N
    paid_once(held_sim)


# --- after a crash -----------------------------------------------------------------------------------
RUN = """
import json, os, sys
from vance_provider.core import BatchSpec, VanceClient
spec = BatchSpec(sys.argv[1], sys.argv[2], "upscale", {"scale": 2}, max_concurrency=2, poll_interval=0.05,
                 storage_options=json.loads(os.environ["SO"]))
with VanceClient(os.environ["T"], base_url=os.environ["U"]) as c:
    c.run_batch(spec)
"""


@pytest.mark.slow
def test_after_kill_9_a_rerun_on_the_same_host_goes_ahead_at_once(
    api: str,
    held_sim: SimulatorServer,
    clients: Callable[[], VanceClient],
    s3: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fs, so, bucket = s3
    src, dest = on_s3(fs, bucket)
    env = {**os.environ, "T": TOKENS[api], "U": held_sim.base_url, "SO": json.dumps(so)}
    proc = subprocess.Popen([sys.executable, "-c", RUN, src, dest], env=env)
    try:
        deadline = time.monotonic() + 60
        while _recorded_jobs(fs, bucket) < 2:  # its first two jobs are on the service and recorded
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start its jobs"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert fs.exists(f"{bucket}/{LOCK}")  # left behind, not expired
    with caplog.at_level(logging.WARNING, "vance_provider.lease"):
        rerun = in_thread(clients().run_batch, batch_spec(src, dest, storage_options=so, max_concurrency=2))
        release_held_jobs(held_sim, HOLD)
        assert rerun.result(timeout=60).done == N  # not refused: the dead pid is seen at once
    assert any("(the process is gone)" in r.getMessage() for r in caplog.records)
    assert len(created_jobs(held_sim)) == N  # its two jobs were resumed, not made again
    paid_once(held_sim)


def _recorded_jobs(fs: Any, bucket: str) -> int:
    try:
        items = json.loads(fs.cat(f"{bucket}/out/{MANIFEST_NAME}"))["items"]
    except (FileNotFoundError, ValueError, KeyError):
        return 0
    return sum(1 for i in items if i.get("job_id"))


# --- partitions: disjoint inputs, one destination ------------------------------------------------------
def test_partitions_of_one_destination_run_side_by_side(
    api: str, held_sim: SimulatorServer, clients: Callable[[], VanceClient], tmp_path: Path
) -> None:
    """Dagster's per-file partitions give a lease scope of their own: two run at once; the same
    partition twice is refused."""
    src, dest = on_disk(tmp_path)
    names = sorted(os.listdir(src))

    def partition(name: str) -> BatchSpec:
        return batch_spec(
            f"{src}/{name}",
            dest,
            manifest=f"{dest}/_vance_partitions/{name}.json",
            lease_scope=f"partition:{name}",
        )

    first = Holding(clients(), partition(names[0]))
    second = Holding(clients(), partition(names[1]))  # not refused
    with pytest.raises(BatchLockedError):
        clients().run_batch(partition(names[0]))
    finishing = [in_thread(first.carry_on), in_thread(second.carry_on)]
    release_held_jobs(held_sim, HOLD)
    assert [f.result(timeout=60).done for f in finishing] == [1, 1]
    assert sum(charges(held_sim)) == 2 and max(charged_jobs(held_sim).values()) == 1


# --- a lease left on S3 by a run on another machine ------------------------------------------------------
def test_a_lease_left_on_s3_is_taken_over_once_the_store_says_it_expired(
    api: str,
    held_sim: SimulatorServer,
    clients: Callable[[], VanceClient],
    s3: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the lease object says about time (its writer's clock) counts for nothing: it is live until
    the store's clock says it has not been renewed for its ttl."""
    fs, so, bucket = s3
    src, dest = on_s3(fs, bucket)
    dead = {"owner": "crashed-run", "host": "gone", "pid": 1, "heartbeat": 0, "expires": 1}
    fs.pipe(f"{bucket}/{LOCK}", json.dumps(dead).encode())
    spec = batch_spec(src, dest, storage_options=so)
    with pytest.raises(BatchLockedError, match="being run by crashed-run"):
        clients().run_batch(spec)
    assert created_jobs(held_sim) == []
    age_object(bucket, LOCK, LEASE_TTL + 5)
    with caplog.at_level(logging.WARNING, "vance_provider.lease"):
        run = in_thread(clients().run_batch, spec)
        release_held_jobs(held_sim, HOLD)
        assert run.result(timeout=60).done == N
    assert any("stale batch lease of crashed-run" in r.getMessage() for r in caplog.records)
    assert not fs.exists(f"{bucket}/{LOCK}")  # released at the end
    paid_once(held_sim)
