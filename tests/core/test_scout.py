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
    phase = "processing" if status is JobStatus.PROCESSING and progress else None
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
        ([0, 10, 20], 3),  # queued, then two readings of its progress give its pace
        ([None, None], 0),  # no progress shown (the web API): nobody waits for its end
    ],
)
def test_the_others_wait_for_the_scout(readings: list[int | None], told_by: int) -> None:
    """Two readings of the scout's progress tell the others when to look; a scout that shows no
    progress would tell only at its end, which is not waited for (the others' first looks teach
    the latency estimate more)."""
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
    scout_at = [i for i, j in enumerate(looks) if j == "a"]
    others = [i for i, j in enumerate(looks) if j != "a"]
    assert looks[0] == "a", looks
    if told_by:
        assert min(others) > scout_at[told_by - 1], looks  # nobody else looked before it told
    else:
        assert max(others) < scout_at[1], looks  # all looked before its second look
    assert sorted(looks[i] for i in others) == ["b", "c", "d"]  # and each of them once: found done
    assert watch.scout is None and watch.scouted
