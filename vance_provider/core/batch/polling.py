"""The one polling loop: the client's ``wait_all``, the batch engine and the Airflow triggers
all wait for jobs through :func:`poll_jobs`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api.models import Job, JobStatus


@dataclass
class PollResult:
    done: dict[str, Job] = field(default_factory=dict)  # terminal jobs by id
    pending: list[str] = field(default_factory=list)  # still running at the deadline (or at a stop)
    looks: int = 0  # rounds of GETs made
    first_look_at: float = 0.0  # time.monotonic() when the first round was sent
    last_look_at: float = 0.0  # time.monotonic() when the last round was sent
    previous_look_at: float = 0.0  # ... and the round before it
    previous_progress: int | None = None  # the progress the round before it read (one job)

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.done.values() if j.status is not JobStatus.SUCCEEDED]


async def poll_jobs(
    get_job: Callable[[str], Awaitable[Job]],
    job_ids: Sequence[str],
    *,
    interval: float,
    max_interval: float,
    first_delay: float | Callable[[], float] = 0.0,
    min_interval: float = 0.0,
    started: float | None = None,
    deadline: float | None = None,
    stop_on_failure: bool = False,
    on_update: Callable[[Job], Awaitable[None] | None] | None = None,
    log: Any = None,
) -> PollResult:
    """Look at the jobs until every one is terminal, one failed (``stop_on_failure``) or the
    ``deadline`` (a ``time.time()`` value) passed; returns what was seen.

    The first look comes after ``first_delay``; a callable (the time left) is asked again on
    waking, so a delay that grew meanwhile is kept (the batch engine's point can rise while a job
    runs). Later looks back off by 1.5x up to ``max_interval``, come sooner when the service's
    progress says a job is about to finish, and never sleep past the deadline (the last look is
    made at it). ``started`` (``time.monotonic()``, default now) is when the jobs began, for the
    progress estimate. No two looks are closer than ``min_interval`` (the vendor's guidance).
    """
    started = time.monotonic() if started is None else started
    result = PollResult(pending=list(dict.fromkeys(job_ids)))
    first_at = time.monotonic() + (0.0 if callable(first_delay) else first_delay)
    delay = first_delay if callable(first_delay) else lambda: first_at - time.monotonic()
    while (wait := _capped(delay(), deadline)) > 0:
        await asyncio.sleep(wait)
    interval = max(0.02, interval)
    readings: dict[str, tuple[float, int]] = {}  # job id -> (elapsed, progress) at its last look
    while result.pending:
        result.previous_look_at, result.last_look_at = result.last_look_at, time.monotonic()
        result.first_look_at = result.first_look_at or result.last_look_at
        jobs = await asyncio.gather(*(get_job(j) for j in result.pending))
        result.looks += 1
        for job in jobs:
            if on_update is not None:
                update = on_update(job)
                if asyncio.iscoroutine(update):
                    await update
            if job.status.terminal:
                result.done[job.id] = job
        running = [j for j in jobs if not j.status.terminal]
        result.pending = [j.id for j in running]
        if not running or (stop_on_failure and result.failed):
            break
        if deadline is not None and time.time() >= deadline:
            break
        elapsed = time.monotonic() - started
        looks = [next_look(j, elapsed, interval, max_interval, readings.get(j.id)) for j in running]
        readings = {j.id: (elapsed, j.progress or 0) for j in running if j.phase in (None, "processing")}
        result.previous_progress = (
            running[0].progress if len(running) == 1 and running[0].id in readings else None
        )
        wait = max(min_interval, min(looks))
        wait = _capped(wait, deadline)
        if log is not None:
            log.info(
                "VanceAI: %d of %d job(s) finished; next look in %.1fs", len(result.done), len(job_ids), wait
            )
        await asyncio.sleep(wait)
        interval = min(max_interval, interval * 1.5)
    return result


def next_look(
    job: Job,
    elapsed: float,
    interval: float,
    longest: float | None = None,
    before: tuple[float, int] | None = None,
) -> float:
    """When to look again: where the service's progress tells when the job ends
    (:func:`time_left`), a little after that, so one look suffices (at most ``longest``, default
    ``4 * interval``); else after ``interval`` (a second reading soon gives the pace)."""
    left = time_left(job, elapsed, before)
    if left is None:
        return interval
    return min(interval * 4 if longest is None else longest, max(0.02, left * 1.05))


def time_left(job: Job, elapsed: float, before: tuple[float, int] | None = None) -> float | None:
    """Seconds until ``job`` ends, as its progress tells (``elapsed``: seconds since it was
    created); ``None`` where it cannot tell.

    With a reading of the job's progress at an earlier look (``before``: elapsed seconds and
    progress), the end is where the pace between the two readings leads; with one reading, only
    past half-way (before that, the time the job queued, which its progress does not count, makes
    a young job look slow)."""
    progress = job.progress or 0
    if job.phase not in (None, "processing") or not 0 < progress < 100:
        return None
    if before is not None and 0 < before[1] < progress and elapsed > before[0]:
        return (100 - progress) * (elapsed - before[0]) / (progress - before[1])
    if progress >= 50:  # one reading: the queueing it counts as processing matters little now
        return elapsed * (100 - progress) / progress
    return None


def _capped(delay: float, deadline: float | None) -> float:
    return delay if deadline is None else max(0.0, min(delay, deadline - time.time()))
