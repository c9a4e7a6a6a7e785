"""The first look at a job, aimed by the lengths the service reports (created_at to finished_at)."""

from __future__ import annotations

import random

import pytest

from vance_provider.core.batch.looks import LookPlanner, best_first_look, looks_after_miss
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


def pace(
    x: float, sample: list[float], *, slots: int, rate: float, k: int, floor: float, longest: float
) -> float:
    """Seconds per job at a first look at ``x``: the slower of the slots and the rate."""
    seen = [looks_after_miss(x, s, floor, longest) for s in sample]
    lag = sum(at - s for (_, at), s in zip(seen, sample, strict=True)) / len(sample)
    looks = sum(n for n, _ in seen) / len(sample)
    return max((sum(sample) / len(sample) + lag) / slots, (k + looks) / rate)


def test_the_point_minimises_the_slower_of_slots_and_rate() -> None:
    sample = lengths(200)
    knobs = {"slots": 16, "rate": 0.909, "k": 2, "floor": 2.0, "longest": 15.0}  # the slots bind: no headroom
    chosen = best_first_look(sample, slots=16, rate=0.909, least_requests=2, floor=2.0, longest=15.0)
    for x in sorted(sample)[:: len(sample) // 20]:
        # no other point (bar the grid's coarseness) is faster
        assert pace(chosen, sample, **knobs) <= pace(x, sample, **knobs) * 1.02


def test_a_look_held_to_the_longest_wait_misses_again_and_is_counted() -> None:
    """A job looked at 20 s before its end, with looks at most 15 s apart, is looked at twice more
    (a second reading under half-way gives the pace, a third look falls short): where the rate
    binds as much as the slots (the documented 60 a minute, 16 slots of ~42 s jobs), the first look
    comes later than it would if the second look always found the job done, and the batch goes
    faster for it."""
    assert looks_after_miss(20.0, 42.0, 2.0, 15.0) == (3, pytest.approx(42.25))
    assert looks_after_miss(30.0, 50.0, 2.0, 15.0)[0] == 2
    assert looks_after_miss(45.0, 42.0, 2.0, 15.0) == (0, 45.0)
    sample = [2.0 + s for s in lengths()]  # the service's queue, then the work
    knobs = {"slots": 16, "rate": 1.0, "k": 2, "floor": 2.0, "longest": 15.0}
    capped = best_first_look(sample, slots=16, rate=1.0, least_requests=2, floor=2.0, longest=15.0)
    unbounded = best_first_look(sample, slots=16, rate=1.0, least_requests=2, floor=2.0)
    assert capped > unbounded
    assert pace(capped, sample, **knobs) < 0.97 * pace(unbounded, sample, **knobs)


def test_when_the_rate_binds_the_slots_keep_time_in_hand() -> None:
    """32 slots of 40 s jobs at 60 requests a minute: the rate binds, but a point that only just
    balances the slots' time with the rate's leaves no request waiting whenever jobs end unevenly,
    and the rate's turns go unused. The point keeps the slots' time per job a tenth under the
    rate's."""
    sample = lengths()
    rate, slots, k, floor = 0.99, 32, 2, 2.0
    x = best_first_look(sample, slots=slots, rate=rate, least_requests=k, floor=floor)
    mean = sum(sample) / len(sample)
    seen = [looks_after_miss(x, s, floor, float("inf")) for s in sample]
    lag = sum(at - s for (_, at), s in zip(seen, sample, strict=True)) / len(sample)
    misses = sum(n for n, _ in seen) / len(sample)
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
