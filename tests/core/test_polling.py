"""The one polling loop (``core.polling.poll_jobs``) on a fake clock: no server, no real sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from vance_provider.core.api.models import Job, JobStatus
from vance_provider.core.batch import polling


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(round(delay, 3))
        self.now += delay


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    fake = FakeClock()
    monkeypatch.setattr(polling, "time", fake)
    # Only polling's view of asyncio: patching asyncio.sleep itself reached other tests' loops.
    fake_asyncio = SimpleNamespace(sleep=fake.sleep, gather=asyncio.gather, iscoroutine=asyncio.iscoroutine)
    monkeypatch.setattr(polling, "asyncio", fake_asyncio)
    yield fake


def job(job_id: str, status: JobStatus, progress: int | None = None) -> Job:
    return Job(
        id=job_id, api="open", tool="upscale", status=status, raw_status=status.value, progress=progress
    )


def scripted(answers: dict[str, list[Job]]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    async def get_job(job_id: str) -> Job:
        calls.append(job_id)
        seq = answers[job_id]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    return get_job, calls


def test_backs_off_and_stops_looking_at_finished_jobs(clock: FakeClock) -> None:
    get_job, calls = scripted(
        {
            "a": [job("a", JobStatus.SUCCEEDED)],
            "b": [job("b", JobStatus.PROCESSING)] * 3 + [job("b", JobStatus.SUCCEEDED)],
        }
    )
    result = asyncio.run(polling.poll_jobs(get_job, ["a", "b", "a"], interval=1.0, max_interval=2.0))
    assert set(result.done) == {"a", "b"} and result.pending == [] and result.looks == 4
    assert calls == ["a", "b", "b", "b", "b"]  # a duplicate id is looked at once; a finished job no more
    assert clock.sleeps == [1.0, 1.5, 2.0]  # 1.5x back-off up to max_interval
    # b ended between the last two looks (its end is learned from them)
    assert (result.previous_look_at, result.last_look_at) == (1002.5, 1004.5)


def test_the_last_look_is_at_the_deadline_and_what_runs_is_pending(clock: FakeClock) -> None:
    get_job, _ = scripted({"a": [job("a", JobStatus.PROCESSING)], "b": [job("b", JobStatus.SUCCEEDED)]})
    result = asyncio.run(
        polling.poll_jobs(get_job, ["a", "b"], interval=4.0, max_interval=60.0, deadline=clock.now + 5)
    )
    assert result.pending == ["a"] and list(result.done) == ["b"]
    assert clock.sleeps == [4.0, 1.0] and clock.now == pytest.approx(1005.0)  # never past the deadline


def test_stop_on_failure_returns_at_the_first_failed_job(clock: FakeClock) -> None:
    get_job, _ = scripted(
        {
            "a": [job("a", JobStatus.PROCESSING), job("a", JobStatus.FAILED)],
            "b": [job("b", JobStatus.PROCESSING)],
        }
    )
    result = asyncio.run(
        polling.poll_jobs(get_job, ["a", "b"], interval=1.0, max_interval=1.0, stop_on_failure=True)
    )
    assert [j.id for j in result.failed] == ["a"] and result.pending == ["b"] and result.looks == 2


def test_reported_progress_brings_the_next_look_forward(clock: FakeClock) -> None:
    # 50 % done after 2 s: about 2 s more (x1.05), capped at 4x the interval.
    get_job, _ = scripted({"a": [job("a", JobStatus.PROCESSING, progress=50), job("a", JobStatus.SUCCEEDED)]})
    result = asyncio.run(polling.poll_jobs(get_job, ["a"], interval=1.0, max_interval=10.0, first_delay=2.0))
    assert result.looks == 2 and clock.sleeps == [2.0, pytest.approx(2.1)]


def test_a_first_delay_that_grew_while_waiting_is_kept(clock: FakeClock) -> None:
    """The batch engine's point can rise while a job runs (another job's look missed): the first
    look comes by the point at the time of the look, not the one read when the job was made."""
    get_job, _ = scripted({"a": [job("a", JobStatus.SUCCEEDED)]})
    point = {"value": 0.25}
    started = clock.now

    def first_delay() -> float:
        left = started + point["value"] - clock.now
        point["value"] = 0.3  # raised once, while this job waited
        return left

    result = asyncio.run(
        polling.poll_jobs(get_job, ["a"], interval=1.0, max_interval=1.0, first_delay=first_delay)
    )
    assert clock.sleeps == [0.25, 0.05] and result.looks == 1
    assert result.first_look_at == result.last_look_at == pytest.approx(started + 0.3)


def test_on_update_sees_every_answer(clock: FakeClock) -> None:
    seen: list[str] = []

    async def note(j: Job) -> None:
        seen.append(f"{j.id}:{j.status.value}")

    get_job, _ = scripted({"a": [job("a", JobStatus.PROCESSING), job("a", JobStatus.SUCCEEDED)]})
    asyncio.run(polling.poll_jobs(get_job, ["a"], interval=1.0, max_interval=1.0, on_update=note))
    assert seen == ["a:processing", "a:succeeded"]


def test_no_two_looks_closer_than_the_guidance(clock: FakeClock) -> None:
    # 99 % done: the progress says "look again at once"; the vendor's guidance says not before 2 s.
    get_job, _ = scripted({"a": [job("a", JobStatus.PROCESSING, progress=99), job("a", JobStatus.SUCCEEDED)]})
    result = asyncio.run(
        polling.poll_jobs(get_job, ["a"], interval=0.5, max_interval=10.0, first_delay=2.0, min_interval=2.0)
    )
    assert result.looks == 2 and clock.sleeps == [2.0, 2.0]


def test_two_progress_readings_aim_past_the_time_spent_queued(clock: FakeClock) -> None:
    # Queued 3 s, then 10 % a second: 10 % at 4 s, 30 % at 6 s, done at 13 s. One reading alone
    # (30 % after 6 s) would say 14 s more; the pace between the two says 7 s (x1.05). Before
    # half-way, one reading only asks for another soon.
    get_job, _ = scripted(
        {
            "a": [
                job("a", JobStatus.PROCESSING, progress=10),
                job("a", JobStatus.PROCESSING, progress=30),
                job("a", JobStatus.SUCCEEDED),
            ]
        }
    )
    result = asyncio.run(
        polling.poll_jobs(get_job, ["a"], interval=2.0, max_interval=60.0, first_delay=4.0, min_interval=2.0)
    )
    assert result.looks == 3 and clock.sleeps[:2] == [4.0, pytest.approx(2.0)]
    assert clock.sleeps[2] == pytest.approx(70 / 10 * 1.05)


def test_the_progress_at_the_look_before_the_end_is_kept(clock: FakeClock) -> None:
    """One job seen running at 30 %, then at 80 %, then done: the result keeps the 80 % of the look
    before the end (the engine places the job's end by it); none without a reading."""
    get_job, _ = scripted(
        {
            "a": [
                job("a", JobStatus.PROCESSING, progress=30),
                job("a", JobStatus.PROCESSING, progress=80),
                job("a", JobStatus.SUCCEEDED, progress=100),
            ]
        }
    )
    result = asyncio.run(polling.poll_jobs(get_job, ["a"], interval=1.0, max_interval=2.0))
    assert result.looks == 3 and result.previous_progress == 80
    get_job, _ = scripted({"b": [job("b", JobStatus.SUCCEEDED)]})
    assert (
        asyncio.run(polling.poll_jobs(get_job, ["b"], interval=1.0, max_interval=2.0)).previous_progress
        is None
    )
