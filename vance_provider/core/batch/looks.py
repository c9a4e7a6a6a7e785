"""When to look first at a job, from the job lengths the service reports: the point that makes the
batch finish soonest, given that every look costs a turn of the key's request rate and every
second a finished job goes unseen holds one of the account's slots.

A first look too early misses (the job still runs): one more request, and the next look, aimed by
the job's progress, comes a little after its end. A first look too late finds the job done, but
its slot sat idle since it ended. With ``C`` slots, a rate of ``R`` requests a second, a job
needing at least ``k`` requests and a first look at ``x``:

    seconds per job, by the slots:  (mean length + mean lag(x)) / C
    seconds per job, by the rate:   (k + share of first looks that miss(x)) / R

and the batch goes at the slower of the two. :func:`best_first_look` picks the ``x`` (among the
quantiles of the lengths seen) that makes the slower one fastest. Where the rate binds (a client
that knew every job's end would wait for the rate, not the slots), it keeps ``SLOT_HEADROOM`` of
the slots' time in hand: jobs do not end evenly, and when the slots bind at
moments, no request is waiting and the rate's turns go unused. The lengths come from the
service's own clock (``created_at`` to ``finished_at``), so our own timing of looks biases nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

QUANTILES = (0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999)
AIM = 1.05  # a look aimed by progress comes this much after the job's end, as estimated
SLOT_HEADROOM = 0.9  # the share of the slots' time the plan may count on


def best_first_look(
    lengths: Sequence[float], *, slots: int, rate: float | None, least_requests: int, floor: float
) -> float:
    """The first look's delay after a job's creation (seconds) that lets the batch go fastest.

    ``lengths``: job lengths seen (seconds, creation to end); ``slots``: jobs in flight at once;
    ``rate``: requests a second the key allows (``None``: unknown, so requests count as free);
    ``least_requests``: the requests a job needs if its first look finds it done; ``floor``: the
    least time between two looks at one job (the vendor's polling guidance)."""
    ordered = sorted(lengths)
    n = len(ordered)
    mean = sum(ordered) / n
    paces = []  # per quantile: its point, the seconds per job by the slots and by the rate
    for q in QUANTILES:
        x = ordered[min(n - 1, round(q * (n - 1)))]
        misses, lag = 0, 0.0
        for length in ordered:
            if length <= x:
                lag += x - length
            else:  # a second look, aimed by the job's progress, no sooner than the floor allows
                misses += 1
                lag += max(x + floor, length * AIM) - length
        by_rate = (least_requests + misses / n) / rate if rate else 0.0
        paces.append((x, (mean + lag / n) / max(1, slots), by_rate))
    # Where the rate binds even a client that knows every job's end, keep some slots' time in hand.
    headroom = SLOT_HEADROOM if rate and least_requests / rate > mean / max(1, slots) else 1.0
    return min(paces, key=lambda p: max(p[1] / headroom, p[2]))[0]


class LookPlanner:
    """Keeps the last job lengths the service reported and the first-look point they give.

    ``ready`` once ``MIN_SAMPLES`` lengths are known; the point is worked out again as lengths
    arrive (each 1/16 more of the sample) and when the slots or the rate change."""

    MIN_SAMPLES = 8
    KEEP = 256  # the newest lengths only: a service that slows down is followed

    def __init__(self, floor: float) -> None:
        self.floor = floor
        self.lengths: deque[float] = deque(maxlen=self.KEEP)
        self._point: float | None = None
        self._basis: tuple[int, int, float | None, int] | None = None
        self._added = 0

    @property
    def ready(self) -> bool:
        return len(self.lengths) >= self.MIN_SAMPLES

    def observe(self, length: float) -> None:
        self.lengths.append(length)
        self._added += 1

    def point(self, *, slots: int, rate: float | None, least_requests: int) -> float:
        basis = (len(self.lengths), slots, rate, least_requests)
        stale = (
            self._basis is None
            or self._added >= max(1, len(self.lengths) // 16)
            or basis[1:] != self._basis[1:]
        )
        if self._point is None or stale:
            self._point = best_first_look(
                self.lengths, slots=slots, rate=rate, least_requests=least_requests, floor=self.floor
            )
            self._basis, self._added = basis, 0
        return self._point
