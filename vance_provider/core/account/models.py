"""The records the account store hands out: a rate, a slot lease, a credit reservation, and the
read-only views used by reports and the ``vance budget`` command."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Literal

from ..api.errors import ConfigurationError

Period = Literal["total", "day", "month"]
PERIODS: tuple[str, ...] = ("total", "day", "month")
#: Seconds a holder stays registered as waiting for a slot after it last asked: a waiting worker
#: asks every ``Account.poll`` seconds, so a killed one stops counting soon.
WAIT_TTL = 2.0
_BUDGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Rate:
    """``limit`` requests per ``window`` seconds."""

    limit: int
    window: float

    def interval(self, margin: float = 1.0) -> float:
        """Seconds between two requests when pacing at this rate: see :func:`pace_interval`."""
        return pace_interval(self.limit, self.window, margin)


#: How far a request's arrival at the service may stray from the time it was paced for (the
#: network, a busy event loop, the clocks of the workers and the store), in seconds.
ARRIVAL_JITTER = 0.6


#: How long after the end of a rate window the account counts requests to it still (the window may
#: not have ended at the service yet), in seconds, at most: the arrival jitter, and the second by
#: which a worker's clock may differ from the service's unseen (a rate gate learns the service's
#: clock from a 429 only when they differ by more). A tenth of the window in a short one.
WINDOW_GUARD = ARRIVAL_JITTER + 1.0

#: The shortest rate window the guard believes in, in seconds: a window is learned as at least the
#: time an answer said it had left, so one first seen just before its end reads as a few
#: milliseconds long, and a tenth of that would guard nothing. (``X-RateLimit-Reset`` is in epoch
#: seconds: windows are whole seconds.)
SHORTEST_WINDOW = 1.0

#: What an answer said of its rate window: ``X-RateLimit-Reset`` (epoch seconds, the service's
#: clock: it names the window), ``X-RateLimit-Remaining``, the seconds it has left; and when the
#: account granted the answered request (the store's clock; None: not through the account).
WindowSeen = tuple[float, int, float, float | None]


def window_guard(window: float | None) -> float:
    """See :data:`WINDOW_GUARD`."""
    return min(WINDOW_GUARD, max(window, SHORTEST_WINDOW) / 10) if window else WINDOW_GUARD


def pace_interval(limit: int | None, window: float, margin: float) -> float:
    """Seconds between two requests paced at ``limit`` per ``window`` seconds, ``margin`` times
    ``window / limit`` apart at most. Requests that far apart, arriving up to ``ARRIVAL_JITTER``
    late, never put more than ``limit`` into one of the service's windows; in a long window that
    slack is a small share of it (60 a minute: 1.01 s apart, not 1.05 s), so no more is taken.
    0 when no limit is known."""
    if not limit or window <= 0:
        return 0.0
    return min(margin, 1 + ARRIVAL_JITTER / window) * window / limit


@dataclass(frozen=True)
class Grant:
    """The answer to a request for request slots: ``granted`` (``slots``: when each request may
    go, on the store's clock; ``wait``: seconds until the first), or not (``wait``: seconds
    before asking again). ``at`` is the store's clock when it answered."""

    granted: bool
    wait: float
    at: float
    slots: tuple[float, ...] = ()


@dataclass(frozen=True)
class RateState:
    """The account's request rate as the store knows it (``learned``: from the service's headers;
    otherwise the default is in force). ``blocked_until`` is on the store's clock."""

    limit: int | None
    window: float | None
    blocked_until: float
    next_at: float
    now: float

    @property
    def learned(self) -> bool:
        return self.limit is not None and self.window is not None


@dataclass
class SlotLease:
    """One job's place among the account's jobs in flight, held until released or until it
    expires (``expires_at``, store clock) without being renewed. ``lost`` is set when a renewal
    found it expired (the worker was paused or cut off from the store longer than its ttl)."""

    id: str
    holder: str
    expires_at: float
    fallback: bool = False  # handed out by the per-process fallback while the store was down
    lost: bool = False
    released: bool = field(default=False, repr=False)


@dataclass(frozen=True)
class SlotState:
    """The jobs in flight: ``capacity``, the leases held (id, holder, expiry), and the holders
    waiting for a slot (holder, since when; the longest waiting first)."""

    capacity: int
    leases: tuple[tuple[str, str, float], ...]
    now: float
    waiting: tuple[tuple[str, float], ...] = ()

    def held_by(self, holder: str) -> int:
        """How many slots ``holder`` holds."""
        return sum(1 for _, h, _ in self.leases if h == holder)

    @property
    def in_use(self) -> int:
        return len(self.leases)


@dataclass
class Reservation:
    """Credits set aside in a budget for one job until it is settled (charged) or released.
    Expires at ``expires_at`` (store clock) unless renewed: a killed worker's credits return."""

    id: str
    budget: str
    credits: float
    holder: str
    expires_at: float
    lost: bool = False
    done: bool = field(default=False, repr=False)


@dataclass(frozen=True)
class BudgetState:
    """A named budget: ``credits`` per ``period`` (``total``, ``day`` or ``month``, UTC), what was
    ``spent`` and is ``reserved`` in the current period (``period_key``: ``2026-12-06``,
    ``2026-12`` or ``total``), and what ``remaining`` is left."""

    name: str
    credits: float
    period: str
    period_key: str
    spent: float
    reserved: float
    reservations: int

    @property
    def remaining(self) -> float:
        return max(0.0, self.credits - self.spent - self.reserved)


def period_key(period: str, now: float) -> str:
    """The period ``now`` (epoch seconds) falls in: ``total``, ``YYYY-MM-DD`` or ``YYYY-MM`` (UTC)."""
    if period == "total":
        return "total"
    t = time.gmtime(now)
    if period == "day":
        return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    if period == "month":
        return f"{t.tm_year:04d}-{t.tm_mon:02d}"
    raise ConfigurationError(f"unknown budget period {period!r}", hint=f"use one of {', '.join(PERIODS)}")


def check_budget(name: str, credits: float | None = None, period: str | None = None) -> None:
    """Refuse a malformed budget name, a negative amount or an unknown period."""
    if not _BUDGET_NAME.match(name):
        raise ConfigurationError(
            f"bad budget name {name!r}",
            hint="1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
        )
    if credits is not None and not (credits >= 0 and credits < float("inf")):
        raise ConfigurationError(f"bad credits for budget {name!r}: {credits!r}", hint="a number >= 0")
    if period is not None and period not in PERIODS:
        raise ConfigurationError(f"unknown budget period {period!r}", hint=f"use one of {', '.join(PERIODS)}")
