"""Only the batch stops a job's wait: its jobs stay recorded in flight, to be canceled or collected."""

from __future__ import annotations

import asyncio
import time

import pytest

from vance_provider.core import BatchSpec
from vance_provider.core.api.models import Job, JobStatus
from vance_provider.core.batch.latency import AdaptiveLimit
from vance_provider.core.batch.watch import JobWatch
from vance_provider.core.transport.rate_gate import RateGate


def test_a_wall_clock_stepping_on_does_not_end_a_job_s_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait that gave up by its own clock (one that stepped on, or the batch's deadline read a
    moment before the batch's own) marked a running job's item failed: the cancel on timeout did
    not find the job, which ran on and was paid for. The wait goes on until the job ends or the
    batch is stopped."""
    spec = BatchSpec("/in", "/out", "upscale", poll_interval=0.01, max_poll_interval=0.02, timeout=60.0)
    watch = JobWatch(spec, RateGate(), AdaptiveLimit(4), requests_per_job=2)
    wall = time.time
    looks: list[JobStatus] = []

    async def get_job(job_id: str) -> Job:
        status = JobStatus.PROCESSING if not looks else JobStatus.SUCCEEDED
        if not looks:
            monkeypatch.setattr(time, "time", lambda: wall() + 7200.0)  # two hours on, at once
        looks.append(status)
        return Job(job_id, "open", "upscale", status, status.value)  # type: ignore[arg-type]

    job = asyncio.run(watch.wait(get_job, "j1", time.monotonic() - 1.0, video=False, timed=True))
    assert job.status is JobStatus.SUCCEEDED
    assert looks == [JobStatus.PROCESSING, JobStatus.SUCCEEDED]


def test_a_stopped_batch_cancels_the_wait_without_recording_an_end() -> None:
    """The batch's timeout (a cancel) ends the wait: nothing is learned from a job that did not end."""
    spec = BatchSpec("/in", "/out", "upscale", poll_interval=0.01, max_poll_interval=0.02)
    watch = JobWatch(spec, RateGate(), AdaptiveLimit(4), requests_per_job=2)
    looked = asyncio.Event()

    async def get_job(job_id: str) -> Job:
        looked.set()
        return Job(job_id, "open", "upscale", JobStatus.PROCESSING, "processing")  # type: ignore[arg-type]

    async def stop_after_a_look() -> None:
        wait = asyncio.create_task(watch.wait(get_job, "j1", time.monotonic() - 1.0, video=False, timed=True))
        await looked.wait()
        wait.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wait

    asyncio.run(stop_after_a_look())
    assert watch.waiting == 0 and watch.scout is None and not watch.looks.ready
