"""Until a first image job ends, one job (the scout) is looked at to learn how long jobs take; the
others wait for what it tells instead of each being looked at early and often."""

from __future__ import annotations

import asyncio

import pytest

from vance_provider.core.api.models import Job, JobStatus
from vance_provider.core.batch.latency import AdaptiveLimit
from vance_provider.core.batch.spec import BatchSpec
from vance_provider.core.batch.watch import JobWatch
from vance_provider.core.transport.rate_gate import RateGate


def job(job_id: str, status: JobStatus, progress: int | None) -> Job:
    phase = "processing" if status is JobStatus.PROCESSING and progress is not None else None
    return Job(
        id=job_id,
        api="open",
        tool="upscale",
        status=status,
        raw_status=status.value,
        phase=phase,
        progress=progress,
    )


@pytest.mark.parametrize(
    ("readings", "told_by"),
    [
        ([10, 20], 2),  # two readings of its progress give its pace: the others go after the second
        ([None, None], 3),  # no progress shown (the web API): the others wait for its end
    ],
)
def test_the_others_wait_for_the_scout(readings: list[int | None], told_by: int) -> None:
    watch = JobWatch(BatchSpec("in", "out", "upscale", poll_interval=0.02), RateGate(), AdaptiveLimit(16), 2)
    looks: list[str] = []
    scout_looks = 0

    async def get_job(job_id: str) -> Job:
        nonlocal scout_looks
        looks.append(job_id)
        if job_id != "a":
            return job(job_id, JobStatus.SUCCEEDED, 100)
        scout_looks += 1
        if scout_looks <= len(readings):
            return job("a", JobStatus.PROCESSING, readings[scout_looks - 1])
        return job("a", JobStatus.SUCCEEDED, 100)

    async def wave() -> None:
        now = asyncio.get_running_loop().time()
        await asyncio.gather(*(watch.wait(get_job, j, now, video=False, timed=True) for j in "abcd"))

    asyncio.run(wave())
    told_at = [i for i, j in enumerate(looks) if j == "a"][told_by - 1]
    others = [i for i, j in enumerate(looks) if j != "a"]
    assert looks[0] == "a" and min(others) > told_at, looks  # nobody else looked before it told
    assert sorted(looks[i] for i in others) == ["b", "c", "d"]  # and each of them once: found done
    assert watch.scout is None and watch.scouted
