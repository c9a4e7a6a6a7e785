"""The first look at a job, aimed by the lengths the service reports (created_at to finished_at)."""

from __future__ import annotations

import random

import pytest

from vance_provider.core.batch.looks import LookPlanner, best_first_look
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
        lag = sum(x - s if s <= x else max(x + floor, s * 1.05) - s for s in sample) / len(sample)
        misses = sum(s > x for s in sample) / len(sample)
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
    lag = sum(x - s if s <= x else max(x + floor, s * 1.05) - s for s in sample) / len(sample)
    misses = sum(s > x for s in sample) / len(sample)
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
