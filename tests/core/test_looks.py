"""The first look at a job, aimed by the lengths the service reports (created_at to finished_at)."""

from __future__ import annotations

import random

import pytest

from vance_provider.core.batch.looks import LookPlanner, best_first_look, fit_lengths
from vance_provider.core.vendors.open.backend import job_length


def lengths(n: int = 400, median: float = 40.0, sigma: float = 0.3, seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [median * rng.lognormvariate(0.0, sigma) for _ in range(n)]


def share_done_by(point: float, sample: list[float]) -> float:
    return sum(length <= point for length in sample) / len(sample)


def test_a_binding_rate_looks_late_so_one_look_suffices() -> None:
    sample = lengths()
    # 16 slots of 40 s jobs would need 0.8 requests a second at two per job: a rate of 0.5 binds.
    point = best_first_look(sample, slots=16, rate=0.5, least_requests=2, floor=2.0)
    assert share_done_by(point, sample) >= 0.9  # (not later: the slots keep some time in hand)


def test_spare_requests_are_spent_on_earlier_looks() -> None:
    sample = lengths()
    free = best_first_look(sample, slots=16, rate=None, least_requests=2, floor=2.0)
    some = best_first_look(sample, slots=16, rate=0.909, least_requests=2, floor=2.0)
    bound = best_first_look(sample, slots=16, rate=0.5, least_requests=2, floor=2.0)
    assert free <= some < bound
    assert share_done_by(free, sample) <= 0.5  # a miss costs only a look aimed by progress


def test_the_point_minimises_the_slower_of_slots_and_rate() -> None:
    sample = lengths(200)
    rate, slots, k, floor = 0.909, 16, 2, 2.0
    mean = sum(sample) / len(sample)

    def pace(x: float) -> float:
        lag, misses = plan_outcome([x] * len(sample), sample, floor)
        return max((mean + lag) / slots, (k + misses) / rate)  # the slots bind: no headroom

    chosen = best_first_look(sample, slots=slots, rate=rate, least_requests=k, floor=floor)
    for x in sorted(sample)[:: len(sample) // 20]:
        assert pace(chosen) <= pace(x) * 1.02  # no other point (bar the grid's coarseness) is faster


def test_when_the_rate_binds_the_slots_keep_time_in_hand() -> None:
    """32 slots of 40 s jobs at 60 requests a minute: the rate binds, but a point that only just
    balances the slots' time with the rate's leaves no request waiting whenever jobs end unevenly,
    and the rate's turns go unused. The point keeps the slots' time per job a tenth under the
    rate's."""
    sample = lengths()
    rate, slots, k, floor = 0.99, 32, 2, 2.0
    x = best_first_look(sample, slots=slots, rate=rate, least_requests=k, floor=floor)
    mean = sum(sample) / len(sample)
    lag, misses = plan_outcome([x] * len(sample), sample, floor)
    by_slots, by_rate = (mean + lag) / slots, (k + misses) / rate
    assert by_slots <= 0.9 * by_rate * 1.01  # a tenth in hand (the quantiles' grid is coarse)
    assert misses <= 0.15  # still about one look per job: the rate binds


def test_the_planner_waits_for_enough_lengths_and_follows_new_ones() -> None:
    planner = LookPlanner(floor=2.0)
    for length in lengths(LookPlanner.MIN_SAMPLES - 1):
        planner.observe(length)
    assert not planner.ready
    planner.observe(40.0)
    assert planner.ready
    first = planner.point(slots=16, rate=0.2, least_requests=2)  # the rate binds throughout
    for length in lengths(300, median=80.0, seed=3):  # the service slows down
        planner.observe(length)
    assert planner.point(slots=16, rate=0.2, least_requests=2) > 1.5 * first


@pytest.mark.parametrize(
    ("created", "finished", "expected"),
    [
        ("2026-06-11T08:30:00Z", "2026-06-11T08:30:42Z", 42.0),  # the document's example
        ("2026-06-11T08:30:00.250Z", "2026-06-11T08:30:00.917Z", 0.667),  # milliseconds
        ("2026-06-11T08:30:00Z", "2026-06-11T08:30:03Z", None),  # whole seconds, too short to time
        ("2026-06-11T08:30:00Z", None, None),  # still running
        ("2026-06-11T08:30:09Z", "2026-06-11T08:30:00Z", None),  # a clock that went back
        ("yesterday", "today", None),
    ],
)
def test_job_length_from_the_service_clock(
    created: str, finished: str | None, expected: float | None
) -> None:
    length = job_length(created, finished)
    assert length == (pytest.approx(expected) if expected is not None else None)


def test_lengths_are_fitted_to_sizes_neither_part_below_zero() -> None:
    sizes = [1.0, 2.0, 4.0, 12.0, 48.0]
    assert fit_lengths([3 + 2 * s for s in sizes], sizes) == pytest.approx((3.0, 2.0))
    # Bigger jobs no longer: the size tells nothing, every job is expected to take the mean.
    assert fit_lengths([10.0, 9.0, 8.0], [1.0, 2.0, 4.0]) == pytest.approx((9.0, 0.0))
    # A line through the sizes would start below zero: through the origin instead.
    a, b = fit_lengths([1.0, 2.0, 30.0], [1.0, 2.0, 3.0])
    assert a == 0.0 and b > 0
    # One size only: nothing tells the part that grows with size.
    assert fit_lengths([30.0, 50.0], [10.0, 10.0]) is None


def test_while_one_size_was_seen_a_smaller_job_is_shorter_and_a_bigger_one_no_longer() -> None:
    """Jobs of 6 s plus 2 s a megapixel, all of 12 MP so far: proportion would put a 48 MP job's
    first look at 120 s (it takes 102 s: its slot would idle) and a 3 MP job's at 7.5 s (it takes
    12 s: one early look, then one aimed by its progress)."""
    planner = LookPlanner(floor=2.0)
    for _ in range(LookPlanner.MIN_SAMPLES):
        planner.observe(30.0, 12.0)
    knobs = {"slots": 16, "rate": 1.0, "least_requests": 2}
    at_12 = planner.point(**knobs, size=12.0)
    assert planner.point(**knobs, size=48.0) == at_12
    assert planner.point(**knobs, size=3.0) == pytest.approx(at_12 / 4)


def mixed_batch(n: int = 300, seed: int = 5) -> tuple[list[float], list[float]]:
    """Photos of 2 to 48 MP, 3 s plus 2.5 s per megapixel each, with a log-normal spread."""
    rng = random.Random(seed)
    sizes = [rng.choice((2.0, 8.0, 12.0, 12.0, 24.0, 48.0)) for _ in range(n)]
    return [(3.0 + 2.5 * s) * rng.lognormvariate(0.0, 0.15) for s in sizes], sizes


def plan_outcome(looks: list[float], sample: list[float], floor: float = 2.0) -> tuple[float, float]:
    """The mean seconds a job's slot sits idle after its end, and the looks more than one per
    job, for jobs first looked at ``looks`` after creation: past half-way a miss's progress aims
    the next look; before, a second reading a floor later gives its pace, then one aimed look."""
    lag = misses = 0.0
    for x, s in zip(looks, sample, strict=True):
        if s <= x:
            lag += x - s
        elif x >= s / 2:
            misses += 1
            lag += max(x + floor, x + (s - x) * 1.05) - s
        else:
            misses += 2
            lag += max(x + 2 * floor, x + floor + (s - x - floor) * 1.05) - s
    return lag / len(sample), misses / len(sample)


@pytest.mark.parametrize("slots", [16, 32])
def test_a_job_is_looked_at_by_its_size_and_the_batch_goes_faster_for_it(slots: int) -> None:
    sample, sizes = mixed_batch()
    sized, blind = LookPlanner(floor=2.0), LookPlanner(floor=2.0)
    for length, size in zip(sample, sizes, strict=True):
        sized.observe(length, size)
        blind.observe(length)
    knobs = {"slots": slots, "rate": 1.0, "least_requests": 2}
    small, big = sized.point(**knobs, size=2.0), sized.point(**knobs, size=48.0)
    assert big > 8 * small  # 8 s against 123 s of work, by the fit
    assert blind.point(**knobs, size=2.0) == blind.point(**knobs, size=48.0)  # sizes not told
    # On a fresh sample of the same batch, the seconds per job by the slots and by the rate.
    fresh, fresh_sizes = mixed_batch(seed=6)
    mean = sum(fresh) / len(fresh)
    lag, misses = plan_outcome([sized.point(**knobs, size=s) for s in fresh_sizes], fresh)
    blind_lag, blind_misses = plan_outcome([blind.point(**knobs)] * len(fresh), fresh)
    pace = max((mean + lag) / slots, 2 + misses)
    blind_pace = max((mean + blind_lag) / slots, 2 + blind_misses)
    if slots == 16:  # the slots bind: what a job's slot idles after its end is cut by a third
        assert lag < 0.67 * blind_lag and pace < blind_pace
    else:  # the rate binds: fewer looks that miss, so more jobs a minute
        assert misses < 0.5 * blind_misses and pace < 0.92 * blind_pace


def test_a_job_of_unknown_size_is_taken_to_be_of_the_median_size() -> None:
    planner = LookPlanner(floor=2.0)
    for length, size in zip(*mixed_batch(), strict=True):
        planner.observe(length, size)
    planner.observe(40.0, None)  # taken over from another run: its size not known
    knobs = {"slots": 16, "rate": 1.0, "least_requests": 2}
    assert planner.point(**knobs, size=None) == planner.point(**knobs, size=12.0)
