"""When to look first at a job, from the job lengths the service reports: the point that makes the
batch finish soonest, given that every look costs a turn of the key's request rate and every
second a finished job goes unseen holds one of the account's slots.

A first look too early misses (the job still runs): one more request, and the next look, aimed by
the job's progress, comes a little after its end (before half-way, one reading does not tell the
time left: a second comes a floor later, then the aimed one). A first look too late finds the job done, but
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

Jobs of different sizes take different times: an image's with its megapixels, a video's with its
duration. So the planner fits the lengths seen to ``a + b * size`` (least squares, neither part
below zero) and plans in multiples of that prediction: ``x`` is then how much of a job's predicted
length to wait before its first look, and a 2 MP photo is looked at long before a 48 MP one.
Where every job seen had the same size (or none is known), the prediction is the same for all
(the plain plan above), but for a smaller job: shorter in proportion to its size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

QUANTILES = (0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999)
AIM = 1.05  # a look aimed by progress comes this much after the job's end, as estimated
SLOT_HEADROOM = 0.9  # the share of the slots' time the plan may count on


def best_first_look(
    lengths: Sequence[float],
    *,
    slots: int,
    rate: float | None,
    least_requests: int,
    floor: float,
    predicted: Sequence[float] | None = None,
) -> float:
    """The first look's delay after a job's creation that lets the batch go fastest: in seconds,
    or with ``predicted`` (each job's predicted length, beside ``lengths``) in multiples of a
    job's predicted length.

    ``lengths``: job lengths seen (seconds, creation to end); ``slots``: jobs in flight at once;
    ``rate``: requests a second the key allows (``None``: unknown, so requests count as free);
    ``least_requests``: the requests a job needs if its first look finds it done; ``floor``: the
    least time between two looks at one job (the vendor's polling guidance)."""
    n = len(lengths)
    scale = list(predicted) if predicted is not None else [1.0] * n
    ratios = sorted(length / p for length, p in zip(lengths, scale, strict=True))
    mean = sum(lengths) / n
    paces = []  # per quantile: its point, the seconds per job by the slots and by the rate
    for q in QUANTILES:
        x = ratios[min(n - 1, round(q * (n - 1)))]
        misses, lag = 0, 0.0
        for length, p in zip(lengths, scale, strict=True):
            at = x * p
            if length <= at:
                lag += at - length
            elif at >= length / 2:  # its progress tells the time left: one look more, aimed by it
                misses += 1
                lag += max(at + floor, at + (length - at) * AIM) - length
            else:  # before half-way one reading does not tell; a second, a floor later, does
                misses += 2
                lag += max(at + 2 * floor, at + floor + (length - at - floor) * AIM) - length
        by_rate = (least_requests + misses / n) / rate if rate else 0.0
        paces.append((x, (mean + lag / n) / max(1, slots), by_rate))
    # Where the rate binds even a client that knows every job's end, keep some slots' time in hand.
    headroom = SLOT_HEADROOM if rate and least_requests / rate > mean / max(1, slots) else 1.0
    return min(paces, key=lambda p: max(p[1] / headroom, p[2]))[0]


def fit_lengths(lengths: Sequence[float], sizes: Sequence[float]) -> tuple[float, float] | None:
    """``(a, b)`` such that a job of ``size`` takes about ``a + b * size`` seconds: least squares,
    neither part below zero; None while every size seen is the same (nothing tells ``a`` from
    ``b``)."""
    n = len(lengths)
    mean_len, mean_size = sum(lengths) / n, sum(sizes) / n
    spread = sum((s - mean_size) ** 2 for s in sizes)
    if spread <= 1e-9 * mean_size**2 * n:
        return None
    b = sum((s - mean_size) * (length - mean_len) for s, length in zip(sizes, lengths, strict=True)) / spread
    if b <= 0:
        return mean_len, 0.0  # bigger jobs were no longer: the size tells nothing
    if (a := mean_len - b * mean_size) >= 0:
        return a, b
    return 0.0, sum(s * length for s, length in zip(sizes, lengths, strict=True)) / sum(s * s for s in sizes)


def scaled_down(length: float, size: float | None, of: float | None) -> float:
    """The length of a job of ``size``, from one of size ``of`` that took ``length``, when nothing
    tells the part of a length that grows with size: a smaller job is taken to be shorter in
    proportion, a bigger one no longer (a first look too early costs one request, and the next
    is aimed by the job's progress; one too late leaves its slot idle)."""
    if size is None or of is None or size <= 0 or of <= 0:
        return length
    return length * min(1.0, size / of)


class LookPlanner:
    """Keeps the last job lengths the service reported, with their jobs' sizes (megapixels, a
    video's seconds), and the first-look point they give.

    ``ready`` once ``min_samples`` lengths are known; the point is worked out again as lengths
    arrive (each 1/16 more of the sample) and when the slots or the rate change. A job whose size
    is not known is taken to be of the sizes' median; while no length came with its size, every
    job is planned alike."""

    MIN_SAMPLES = 8
    KEEP = 256  # the newest lengths only: a service that slows down is followed

    def __init__(self, floor: float, min_samples: int = MIN_SAMPLES) -> None:
        self.floor, self.min_samples = floor, min_samples
        self.lengths: deque[float] = deque(maxlen=self.KEEP)
        self.sizes: deque[float | None] = deque(maxlen=self.KEEP)
        self._point: float | None = None
        self._fit: tuple[float, float] | None = None  # length = a + b * size, as last fitted
        self._mean = 1.0  # the mean length, for when nothing was fitted
        self._typical: float | None = None  # the median of the sizes known (None: none known)
        self._basis: tuple[int, int, float | None, int] | None = None
        self._added = 0

    @property
    def ready(self) -> bool:
        return len(self.lengths) >= self.min_samples

    def observe(self, length: float, size: float | None = None) -> None:
        self.lengths.append(length)
        self.sizes.append(size if size is not None and size > 0 else None)
        self._added += 1

    def point(
        self, *, slots: int, rate: float | None, least_requests: int, size: float | None = None
    ) -> float:
        """Seconds after its creation to look first at a job of ``size``."""
        basis = (len(self.lengths), slots, rate, least_requests)
        stale = (
            self._basis is None
            or self._added >= max(1, len(self.lengths) // 16)
            or basis[1:] != self._basis[1:]
        )
        if self._point is None or stale:
            self._plan(slots=slots, rate=rate, least_requests=least_requests)
            self._basis, self._added = basis, 0
        assert self._point is not None
        return self._point * self._predict(size)

    def _predict(self, size: float | None) -> float:
        if self._typical is None:  # the lengths came without sizes: a size has no scale
            return self._mean
        size = size if size is not None and size > 0 else self._typical
        if self._fit is None:  # every size seen was the same
            return scaled_down(self._mean, size, self._typical)
        a, b = self._fit
        return a + b * size

    def _plan(self, *, slots: int, rate: float | None, least_requests: int) -> None:
        known = sorted(s for s in self.sizes if s is not None)
        self._typical = known[len(known) // 2] if known else None
        sizes = [(self._typical or 1.0) if s is None else s for s in self.sizes]
        self._mean = sum(self.lengths) / len(self.lengths)
        self._fit = fit_lengths(self.lengths, sizes)
        predicted = [max(1e-3, self._predict(s)) for s in sizes]
        self._point = best_first_look(
            list(self.lengths),
            slots=slots,
            rate=rate,
            least_requests=least_requests,
            floor=self.floor,
            predicted=predicted,
        )
