"""The two controllers of a batch: how many jobs run at once, and how long a job is expected to take."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable


class AdaptiveLimit:
    """At most ``limit`` jobs in flight; shrinks when the service says 429 concurrency, regrows slowly.

    A FIFO limiter whose size changes at run time (anyio's ``CapacityLimiter``): a release wakes
    one waiter, not all of them.
    """

    def __init__(self, limit: int) -> None:
        import anyio

        self.max = self.limit = max(1, limit)
        self.successes = 0
        self._limiter = anyio.CapacityLimiter(self.limit)

    @property
    def in_use(self) -> int:
        return int(self._limiter.borrowed_tokens)

    async def acquire(self) -> None:
        await self._limiter.acquire()

    def release(self) -> None:
        self._limiter.release()

    def shrink(self) -> None:
        self.limit = max(1, min(self.limit, self.in_use) - 1)
        self._limiter.total_tokens = self.limit
        self.successes = 0

    def grow(self) -> None:
        self.successes += 1
        if self.limit < self.max and self.successes >= 5:
            self.limit += 1
            self._limiter.total_tokens = self.limit
            self.successes = 0


class LatencyEstimate:
    """When to look first at a job: the time by which a share ``q`` of jobs have finished.

    Every first look tells whether its job was done by then, with no bias from which jobs
    happen to be measured; so the point is tracked by stochastic approximation: a little
    earlier after each hit, later after each miss, and the share of hits settles at ``q``.
    ``q`` follows the key's rate pressure (``pressure()``, 0 to 1): 0.999 when the request rate
    binds (a missed look costs a turn of the rate budget, while slots are not what limits; at
    0.995, one first look in 200 missed by design),
    0.65 when it does not (a missed look costs only a second look soon after, aimed by the
    service's progress where it reports one; a late look holds a slot the service could use).
    But no second look comes sooner than the poll interval after the first: where that is as long
    as the point itself, a miss holds its slot longer than any late look would, and hits count as
    much as when the rate binds.
    Until a few jobs have been missed, the point is learned from the misses, from a quarter of
    the poll interval at first: each missed job ended where the progress the service showed at
    the look that saw it running leads (else between that look and the one that found it done:
    their midpoint), so the point goes to the median of those ends. Learned, it comes down as if
    aiming at ``PROBE`` until a first look misses: a point learned from midpoints a poll interval
    wide sat 45 % above the jobs' length, and at 99.9 % it came down by 0.005 % per hit. (The
    look that found it done alone overshoots by up to a backed-off interval: the point then took
    ~300 jobs to come down, 0.33 s against 0.25 s jobs, ~0.7 s of a 1000-job batch.)

    While requests are cheap the step is divided by the number of jobs in flight: they were all
    looked at with the same point, so their answers arrive together, a job's length after the
    point was set. A full step per answer made the point swing between 0.8x and 1.6x of the jobs'
    length (measured: 200 to 400 ms for 0.254 s jobs at 16 in flight, the first look 46 ms late on
    average). When the rate binds the point sits in the thin tail of the lengths, where a full
    step does not swing, and a miss must move it up at once (each costs a turn of the rate budget):
    the step is divided less as the pressure grows, not at all at 1.
    """

    LEARN = 5  # misses before the stochastic approximation takes over
    STEP = 0.05  # log-step: a miss moves the point up by up to 5 %
    LOW, HIGH = 0.65, 0.999  # the share of first looks that should find the job done
    BOUND = 0.9  # the rate pressure from which the rate counts as binding
    PROBE = 0.95  # the share aimed at once learned, until the first miss

    def __init__(
        self, initial: float, pressure: Callable[[], float] = lambda: 1.0, *, floor: float = 0.0
    ) -> None:
        self.floor = floor  # the least time between two looks at one job
        self.value = initial / 4
        self.pressure = pressure
        self.misses = 0
        self._ends: list[float] = []  # while learning: where each missed job likely ended
        self._probing = True  # learned, and no miss since: the point may come down faster

    @property
    def target(self) -> float:
        # (see the class docstring: a miss is seen again no sooner than ``floor`` later)
        return self.LOW + (self.HIGH - self.LOW) * max(self._pressure(), min(1.0, self.floor / self.value))

    def _pressure(self) -> float:
        # A key used at 90 % of the gate's pace has no room for second looks: counted as bound (a
        # rate-bound batch read 0.93 on average, as its rate breathes with its slots, and aimed at
        # 97 % hits: 3.02 requests per job).
        return min(1.0, max(0.0, self.pressure() / self.BOUND))

    def observe(
        self,
        seconds: float,
        first_poll_hit: bool,
        in_flight: int = 1,
        running_at: float | None = None,
        point: float | None = None,
        running_progress: int | None = None,
    ) -> None:
        """``seconds``: from the job's creation to the look that found it done; ``running_at``:
        to the look before it, which saw it running (a miss), and ``running_progress`` the
        progress (0-100) that look read, if any; ``in_flight``: how many jobs share the point
        (the batch's jobs on the service); ``point``: the point its first look used.

        A miss moves the point at most one full step above the point that job used, or to where
        the job ended if that is later: the misses of one wave, answering together, raise it
        once. (At full pressure each raised it a full step: a wave of misses as the pressure rose
        took it from 0.30 s to 0.40 s for 0.255 s jobs, and at 99.5 % hits it came down by 0.03 %
        per hit, so slots were held 40 % too long for the rest of the batch: 1 run in 4 took
        22-24 s, not 19.5.)"""
        ended = seconds if running_at is None else (running_at + seconds) / 2  # a miss's likely end
        placed = False  # by the service's progress at the look that saw it running: its end at that pace
        if running_at is not None and running_progress is not None and 0 < running_progress < 100:
            ended, placed = min(seconds, max(running_at, running_at * 100 / running_progress)), True
        if self.misses < self.LEARN:
            if first_poll_hit:
                self.value = max(0.02, self.value * 0.97)
            else:
                # An end placed by progress is measured, not guessed between two looks: one will do
                # (one missed job at a time, as a worker holding one of the account's slots sees
                # them, each miss held its slot a poll interval longer).
                self.misses = self.LEARN if placed else self.misses + 1
                self._ends.append(ended)
                self.value = max(0.02, statistics.median(self._ends))
            return
        step = self.STEP / max(1.0, 1 + (in_flight - 1) * (1 - self._pressure()))
        target = self.target
        if first_poll_hit and self._probing:
            target = min(target, self.PROBE)
        if not first_poll_hit and (point is None or point >= self.value):
            self._probing = False  # (a miss at a point learned before says nothing of this one)
        moved = self.value * math.exp(step * (target - first_poll_hit))
        if not first_poll_hit and point is not None:
            moved = min(moved, max(self.value, ended, point * math.exp(self.STEP * self.target)))
        self.value = max(0.02, moved)
