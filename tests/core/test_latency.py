"""Where the batch engine looks first at a job (``LatencyEstimate``), on drawn job lengths: no
server, no clock. Each first look either finds its job done (the length is at most the look's
time) or not; the share that do must settle at the target for the key's rate pressure."""

from __future__ import annotations

import asyncio
import math
import random
import statistics

import pytest

from vance_provider.core.batch.latency import LatencyEstimate


def first_looks(estimate: LatencyEstimate, lengths: list[float]) -> list[bool]:
    hits = []
    for length in lengths:
        hit = length <= estimate.value
        # A miss is seen done at a second look a little after the job ended.
        estimate.observe(estimate.value if hit else length * 1.05, first_poll_hit=hit)
        hits.append(hit)
    return hits


@pytest.mark.parametrize(
    ("pressure", "spread"),
    [(0.0, 0.05), (0.0, 0.6), (1.0, 0.05), (1.0, 0.6), (0.5, 0.3), (0.92, 0.3)],
)
def test_the_share_of_first_looks_that_find_the_job_done_settles_at_the_target(
    pressure: float, spread: float
) -> None:
    rng = random.Random(17)
    lengths = [rng.lognormvariate(math.log(0.27), spread) for _ in range(30_000)]
    estimate = LatencyEstimate(0.5, lambda: pressure)
    hits = first_looks(estimate, lengths)
    steady = statistics.fmean(hits[5_000:])
    low, high = LatencyEstimate.LOW, LatencyEstimate.HIGH
    assert estimate.target == pytest.approx(low + (high - low) * min(1.0, pressure / LatencyEstimate.BOUND))
    assert steady == pytest.approx(estimate.target, abs=0.015)


def test_when_requests_are_cheap_the_first_look_is_not_held_to_the_slowest_jobs() -> None:
    """With spread job lengths, a rate-bound key looks late (a missed look costs a turn of the rate
    budget); an idle one looks near the 65th percentile and keeps its slots turning."""
    rng = random.Random(3)
    lengths = [rng.lognormvariate(math.log(1.0), 0.6) for _ in range(20_000)]
    ranked = sorted(lengths)
    idle, bound = LatencyEstimate(0.5, lambda: 0.0), LatencyEstimate(0.5, lambda: 1.0)
    first_looks(idle, lengths)
    first_looks(bound, lengths)
    p65, p99 = ranked[int(0.65 * len(ranked))], ranked[int(0.99 * len(ranked))]
    assert idle.value < 0.5 * bound.value
    assert 0.85 * p65 < idle.value < 1.15 * p65 and bound.value > 0.7 * p99


def test_the_estimate_follows_jobs_that_get_faster_and_slower() -> None:
    estimate = LatencyEstimate(0.5, lambda: 1.0)
    first_looks(estimate, [0.5] * 3_000)
    slow = estimate.value
    first_looks(estimate, [0.25] * 20_000)
    assert estimate.value < 0.6 * slow  # crept down (a hit moves it down a little)
    first_looks(estimate, [1.0] * 200)
    assert estimate.value >= 1.0  # a run of misses moves it up fast


def waves(
    in_flight: int, rounds: int = 400, pressure: float = 0.0, hits: list[bool] | None = None
) -> list[float]:
    """``in_flight`` jobs looked at with the same point, their answers all arriving a job later,
    as in a batch: the point after each wave (``hits``: each first look's outcome)."""
    rng = random.Random(5)
    estimate = LatencyEstimate(0.5, lambda: pressure)
    points = []
    for _ in range(rounds):
        point = estimate.value
        lengths = [0.254 + rng.expovariate(1 / 0.006) for _ in range(16)]
        for length in lengths:
            hit = length <= point
            estimate.observe(
                point if hit else length * 1.05, first_poll_hit=hit, in_flight=in_flight, point=point
            )
            if hits is not None:
                hits.append(hit)
        points.append(estimate.value)
    return sorted(points[100:])


def test_answers_that_arrive_together_do_not_make_the_point_swing() -> None:
    """16 jobs share each point and answer together: one full step per answer swung it between
    0.8x and 1.6x of the jobs' length; a step shared by the jobs in flight keeps it in a narrow band
    at the target."""
    shared, full = waves(in_flight=16), waves(in_flight=1)
    p10, p90 = shared[len(shared) // 10], shared[9 * len(shared) // 10]
    assert p90 / p10 < 1.05 and p10 > 0.25 and p90 < 0.28
    assert full[9 * len(full) // 10] / full[len(full) // 10] > 1.3


def test_when_the_rate_binds_misses_stay_rare_with_many_jobs_in_flight() -> None:
    """At full pressure the step is not divided: a miss moves the point up at once, so after a
    short start almost every first look finds its job done (each miss would cost a request)."""
    hits: list[bool] = []
    waves(in_flight=16, rounds=70, pressure=1.0, hits=hits)
    steady = hits[10 * 16 :]
    assert sum(steady) / len(steady) >= 0.99


def looked_at(length: float, first: float, interval: float) -> tuple[float, float | None]:
    """When the engine's looks (``first``, then backing off by 1.5x) find a job of ``length``
    done, and when the look before saw it running (``None``: the first look found it done)."""
    before, look = None, first
    while look < length:
        before, look = look, look + interval
        interval *= 1.5
    return look, before


def test_the_first_misses_teach_where_jobs_end_not_when_a_backed_off_look_saw_it() -> None:
    """The first jobs are looked at far too early, then at backed-off intervals: the look that
    finds each one done comes up to an interval late (0.29 s for 0.254 s jobs). The point is
    learned from where the jobs ended (between the last two looks), so it starts near their
    length and not at the late looks (it then took ~300 jobs to come down)."""
    rng = random.Random(11)
    estimate = LatencyEstimate(0.5, lambda: 0.0)
    seen, start = [], estimate.value
    for _ in range(16):  # the first wave: every job looked at with the starting point
        length = 0.254 + rng.expovariate(1 / 0.004)
        look, before = looked_at(length, start, 0.02)
        seen.append(look)
        estimate.observe(look, first_poll_hit=before is None, in_flight=16, running_at=before)
    assert min(seen) > 1.12 * 0.256  # the looks that found them done overshoot...
    assert 0.85 * 0.256 < estimate.value < 1.05 * 0.256  # ...the point does not


def test_a_key_used_at_nine_tenths_of_its_pace_counts_as_bound() -> None:
    """A rate-bound batch's rate breathes with its slots (it read 0.93 on average): from 0.9 on,
    the first look aims as high as at full pressure, so second looks stay rare."""
    low, high = LatencyEstimate.LOW, LatencyEstimate.HIGH
    assert LatencyEstimate(0.5, lambda: 0.93).target == LatencyEstimate(0.5, lambda: 1.0).target == high
    assert LatencyEstimate(0.5, lambda: 0.45).target == pytest.approx(low + (high - low) / 2)


def test_a_wave_of_misses_raises_the_point_once_not_once_per_miss() -> None:
    """At full pressure a miss moves the point a full step; 16 misses of one wave (looked at with
    the same point, answering together) moved it 16 times: 0.30 s became 0.40 s for 0.255 s jobs
    and, at 99.5 % hits, came down by 0.03 % per hit for the rest of the batch. A miss now raises
    it at most one step above the point its job used, or to where its job ended."""
    estimate = LatencyEstimate(0.5, lambda: 1.0)
    first_looks(estimate, [0.25] * 50)  # learned: the point sits at the jobs' length
    point = estimate.value
    for _ in range(16):  # the wave: every job ran 2 % longer than the point, found 20 ms late
        estimate.observe(
            point * 1.02 + 0.02, first_poll_hit=False, in_flight=16, running_at=point, point=point
        )
    assert estimate.value <= point * math.exp(estimate.STEP)
    assert estimate.value >= point * 1.02  # ...and at least where they ended
    unbounded = LatencyEstimate(0.5, lambda: 1.0)
    unbounded.value, unbounded.misses = point, estimate.LEARN
    for _ in range(16):  # without the point: the old full step per miss
        unbounded.observe(point * 1.02 + 0.02, first_poll_hit=False, in_flight=16)
    assert unbounded.value > 2 * point


def test_where_a_miss_waits_the_poll_interval_first_looks_aim_to_find_jobs_done() -> None:
    """No second look comes sooner than the poll interval: where that is as long as the point, a
    miss holds its slot longer than any late look, so even an idle key aims as high as a bound one;
    where the interval is short beside the jobs, an idle key still looks near its 65th percentile."""
    long_floor = LatencyEstimate(0.5, lambda: 0.0, floor=0.5)
    long_floor.value = 0.27
    assert long_floor.target == LatencyEstimate.HIGH
    short_floor = LatencyEstimate(2.0, lambda: 0.0, floor=2.0)
    short_floor.value = 40.0
    assert short_floor.target == pytest.approx(
        LatencyEstimate.LOW + (LatencyEstimate.HIGH - LatencyEstimate.LOW) * 2.0 / 40.0
    )


def test_the_first_misses_are_placed_by_the_progress_the_service_showed() -> None:
    """With a poll interval of 0.5 s, a job of 0.26 s first seen running at 0.125 s is found done
    at 0.625 s: the midpoint of the two looks (0.375 s) puts its end 45 % late, and with first
    looks aimed at hits the point came down from there by ~5 % per 1000 jobs. The progress the
    service showed at the look that saw it running (48 % at 0.125 s) places the end at once."""
    rng = random.Random(7)
    with_progress, without = LatencyEstimate(0.5, lambda: 1.0), LatencyEstimate(0.5, lambda: 1.0)
    for estimate, shown in ((with_progress, True), (without, False)):
        for _ in range(16):
            length = 0.26 + rng.uniform(-0.005, 0.005)
            first = estimate.value
            progress = int(first / length * 100) if first < length else None
            found = first if progress is None else first + 0.5
            estimate.observe(
                found,
                first_poll_hit=progress is None,
                running_at=None if progress is None else first,
                running_progress=progress if shown else None,
            )
    assert 0.25 < with_progress.value < 0.28
    assert without.value > 0.33


def test_the_step_is_shared_by_the_jobs_waited_for_not_by_the_batch_limit() -> None:
    """A worker allowed 16 jobs that holds 2 of the account's slots (the others are other workers')
    has 2 jobs whose answers share a point: the step is divided by those, not by 16."""
    from vance_provider.core.api.models import Job, JobStatus
    from vance_provider.core.batch.latency import AdaptiveLimit
    from vance_provider.core.batch.spec import BatchSpec
    from vance_provider.core.batch.watch import JobWatch
    from vance_provider.core.transport.rate_gate import RateGate

    watch = JobWatch(BatchSpec("in", "out", "upscale", poll_interval=0.02), RateGate(), AdaptiveLimit(16), 2)
    shared: list[int] = []
    observe = watch.latency.observe

    def recording(*args: object, in_flight: int = 1, **kwargs: object) -> None:
        shared.append(in_flight)
        observe(*args, in_flight=in_flight, **kwargs)  # type: ignore[arg-type]

    watch.latency.observe = recording  # type: ignore[method-assign]

    async def get_job(job_id: str) -> Job:
        return Job(id=job_id, api="open", tool="upscale", status=JobStatus.SUCCEEDED, raw_status="succeeded")

    async def two_jobs() -> None:
        now = asyncio.get_running_loop().time()
        await asyncio.gather(*(watch.wait(get_job, j, now, video=False, timed=True) for j in ("a", "b")))

    asyncio.run(two_jobs())
    assert sorted(shared) == [1, 2] and watch.waiting == 0


def test_a_point_learned_from_wide_brackets_comes_down_until_a_first_look_misses() -> None:
    """The web API shows no progress: 16 jobs of 0.26 s first looked at 0.125 s are found done a
    poll interval (0.5 s) later, so each one's end is guessed at the midpoint, 0.375 s. Aiming at
    hits (the poll interval is longer than the point), the point came down by 0.005 % per hit and
    held each slot ~0.1 s past its job for the whole batch; once learned it now comes down faster
    until a first look misses, then holds near the jobs' length."""
    estimate = LatencyEstimate(0.5, lambda: 1.0, floor=0.5)
    first = estimate.value
    for _ in range(16):  # the first wave, looked at with the starting point, answering together
        estimate.observe(first + 0.5, first_poll_hit=False, in_flight=16, running_at=first, point=first)
    assert estimate.value > 0.35
    for _ in range(400):
        point = estimate.value
        hit = point >= 0.26
        estimate.observe(
            point if hit else point + 0.5, first_poll_hit=hit, running_at=None if hit else point, point=point
        )
    assert 0.26 <= estimate.value < 0.29
