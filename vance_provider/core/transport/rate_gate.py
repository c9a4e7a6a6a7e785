"""The rate gate: one per client, so its calls stay within the key's request rate."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..account.models import pace_interval
from .retry import parse_retry_after

#: What an answer said of its rate window: ``X-RateLimit-Remaining`` and ``-Reset`` (epoch), each
#: None when absent.
Told = tuple[int | None, float | None]


class RateGate:
    """Shared by every API call of one client (one backend per client), so the client stays within
    the key's request rate: a token bucket whose rate is learned from what the server says.

    The documents promise ``Retry-After`` and ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset``
    (epoch seconds: when the window ends) on a ``429 rate_limited``; so:

    - After a 429 nothing goes until ``Retry-After`` has passed and the window has reset. Then
      one request goes first (the probe) and the others follow it one by one, ``interval``
      apart: never all at once. Each caller takes its own slot; none sleeps to a shared instant.
    - ``interval`` is ``window / Limit``, with a margin. The window is at least as long as the
      time one was seen to have left (``Reset`` less the server's clock, read through
      ``Retry-After``), and a 429 although paced makes it 20 % longer, up to the shortest time
      seen from one reset to a later one (a whole number of windows). So pacing too fast only
      ever slows it down. A 429 without ``X-RateLimit-Limit`` paces by how many requests
      passed in its ``Retry-After``.
    - When successful answers carry ``X-RateLimit-Remaining`` too (not promised; our simulator
      sends them by default), what is left of the window is spent without pacing, then calls
      wait for the reset. A late answer from an older window (its ``Reset`` is earlier) says
      nothing about the current one and is ignored.
    - A 429 to a request sent before the current block began is old news: ignored.
    """

    MARGIN = 1.1  # pace at most this much under the learned rate: arrivals jitter (pace_interval)
    GROWTH = 1.2  # a 429 although paced: the window is this much longer than thought, at least
    MAX_WINDOW = 3600.0

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self.limit: int | None = None  # X-RateLimit-Limit: requests per window
        self.window = 0.0  # the window is at least this long (seconds)
        self.reset: float | None = None  # X-RateLimit-Reset (epoch) of the newest window seen
        self.reset_at = 0.0  # the same, on the monotonic clock
        self.remaining: int | None = None  # what the newest window has left, when answers say it
        self._fallback = 0.0  # the interval after a 429 without X-RateLimit-Limit
        self._sent: deque[float] = deque(maxlen=512)  # when recent requests went, less those refused
        self.not_before = 0.0  # monotonic: nothing goes before this (Retry-After)
        self.next_at = 0.0  # monotonic: the bucket's next free slot
        self.blocked_at = -math.inf  # monotonic: when the current block began
        self._skew = 0.0  # how far the server's clock is ahead of ours (beyond a second)
        self._gap = math.inf  # the shortest time seen from one window's reset to a later one's
        self._last_spent = 0.0  # the share of the previous window's requests that were spent
        self._paced_since = math.inf  # monotonic: since when the gate knows a rate to pace by
        self.epoch = 0  # +1 whenever the schedule is redone: slots taken before are void
        self.answers = 0  # answers observed
        self.limited = 0  # 429 rate_limited answers seen
        self.concurrency_refusals = 0  # 429 concurrency_limit_exceeded answers seen
        #: Called on each ``429 concurrency_limit_exceeded`` (a batch lowers its concurrency).
        self.on_concurrency_limit: list[Callable[[], None]] = []

    @property
    def interval(self) -> float:
        """Seconds between two requests when pacing (0: no limit known yet)."""
        if not self.limit:
            return self._fallback
        return pace_interval(self.limit, self.window, self.MARGIN)

    def window_told(self, told: Told) -> tuple[float, int, float] | None:
        """What an answer just observed (``told``: what :meth:`observe` returned) said of the
        window the gate now counts in: its ``X-RateLimit-Reset``, ``-Remaining`` and the seconds
        it has left; None if it did not say them, or spoke of an older window."""
        remaining, reset = told
        if remaining is None or reset is None or self.reset is None or abs(reset - self.reset) > 1e-3:
            return None
        return reset, remaining, max(0.0, self.reset_at - self._clock())

    async def wait(self, *, paced: bool = True) -> float:
        """Wait for this caller's turn; returns when it went (monotonic), for :meth:`observe`.
        ``paced=False``: the account already paced this call, for every worker of the key (pacing
        it again here would let it reach the service later than the account counted it); only
        a block (``Retry-After``) or a window this gate knows is spent holds it."""
        slot: float | None = None
        epoch = self.epoch
        while True:
            now = self._clock()
            if epoch != self.epoch:  # a 429 or a spent window came meanwhile: the slot is void
                slot, epoch = None, self.epoch
            if now < self.not_before:
                await self._sleep(self.not_before - now)
                continue
            left = self.remaining if now < self.reset_at else None  # what the server said is left
            known = left is not None
            if left is not None and left <= 0:
                self._hold(self.reset_at)  # spent: nothing more before the window ends
                continue
            if slot is None:
                # What is left of a known window is spent at once; a call the account already
                # paced goes too (only a block or a spent window holds it).
                if known or not paced:
                    break
                slot = max(now, self.next_at)
                self.next_at = slot + self.interval
            if slot > now:
                await self._sleep(slot - now)
                continue
            break
        if known and self.remaining is not None:
            self.remaining -= 1
        self._sent.append(now)  # passed, unless a 429 for it comes back
        return now

    def observe(
        self,
        headers: Mapping[str, str],
        sent: float | None = None,
        *,
        limited: bool = False,
        retry_after: float | None = None,
    ) -> Told:
        """Learn from an answer; ``limited`` for a ``429 rate_limited``, ``sent`` from :meth:`wait`.
        Returns what it said of its window (``X-RateLimit-Remaining``, ``-Reset``)."""
        now, wall = self._clock(), self._wall()
        self.answers += 1
        sent = now if sent is None else sent
        paced = sent > self._paced_since  # the gate knew a rate when this went
        limit, remaining, reset = _rate_headers(headers)
        self.limit = limit or self.limit
        wait = parse_retry_after(headers) if limited and reset is not None else None
        if wait is not None and reset is not None and abs(reset - wall - self._skew - wait) > 1.0:
            self._skew = reset - wall - wait  # Reset is the server's clock, Retry-After is not
        if reset is not None:
            self._window_seen(reset, remaining, now, wall + self._skew)
        if self.interval > 0:
            self._paced_since = min(self._paced_since, now)
        if limited:
            self._refused(sent, now, paced, reset, retry_after)
        return remaining, reset

    def _refused(
        self, sent: float, now: float, paced: bool, reset: float | None, retry_after: float | None
    ) -> None:
        """A ``429 rate_limited`` to the request sent at ``sent``: hold every call."""
        self.limited += 1
        with contextlib.suppress(ValueError):
            self._sent.remove(sent)  # it did not pass
        if sent <= self.blocked_at:
            return  # sent before the current block began: that block covers it already
        wait = 1.0 if retry_after is None else retry_after
        if self.limit:
            if reset is None:  # Retry-After is what is left of the window, so it is no shorter
                self._learn_window(wait)
            elif paced:  # refused although paced: the window is longer than thought, but no
                # longer than from one reset to the next (a whole number of windows)
                self._learn_window(min(self.window * self.GROWTH, self._gap))
        else:  # nothing says the rate: as many as passed in the last Retry-After
            came = sum(1 for t in self._sent if t >= now - wait)
            self._fallback = self.MARGIN * min(wait, self.MAX_WINDOW) / max(1, came)
        until = now + wait
        if reset is not None and reset >= (self.reset or 0.0):
            until = max(until, self.reset_at)
        self._hold(until, block=True)

    def pressure(self) -> float:
        """How close the key's request rate is to its limit, 0 to 1: the share of the rate the gate
        allows itself (``MARGIN`` under the key's) used over the last couple of seconds; 1 while
        calls wait for a window to reset, 0 while no limit is known. Measured against the key's
        own rate, a gate pacing at its margin read 0.91, never "bound"."""
        now = self._clock()
        if now < self.not_before or (
            self.remaining is not None and self.remaining <= 0 and now < self.reset_at
        ):
            return 1.0
        if not self.limit or not self.window:
            return 0.0
        span, recent = min(self.window, 2.0), 0
        for sent in reversed(self._sent):  # the newest last
            if sent < now - span:
                break
            recent += 1
        return min(1.0, max(recent / span * self.interval, self._window_pace(now)))

    def _window_pace(self, now: float) -> float:
        """The share of the current window's requests spent, over the share of its time gone (the
        gate spends what a window has left without pacing, in bursts that then wait for its reset:
        over a couple of seconds the rate can look low while the window's budget runs out)."""
        if self.remaining is None or not self.limit or now >= self.reset_at:
            return 0.0
        gone = self.window - (self.reset_at - now)
        if gone < min(2.0, self.window / 4):  # too early in the window to tell: as the last one
            return self._last_spent
        return (self.limit - self.remaining) / self.limit / (gone / self.window)

    def refused_for_concurrency(self) -> None:
        """A ``429 concurrency_limit_exceeded``: the account's jobs in flight, not the key's rate,
        so no other call waits; the refused one retries after ``Retry-After``."""
        self.concurrency_refusals += 1
        for listener in self.on_concurrency_limit:
            listener()

    def _learn_window(self, seconds: float) -> None:
        self.window = max(self.window, min(seconds, self.MAX_WINDOW))

    def _hold(self, until: float, *, block: bool = False) -> None:
        """Nothing goes before ``until``; then the first caller (the probe), the others
        ``interval`` apart: slots taken before are void. ``block``: after a 429."""
        if until > self.not_before or block:
            self.not_before = max(self.not_before, until)
            self.next_at = self.not_before
            self.epoch += 1
        if block:
            self.blocked_at = self._clock()

    def _window_seen(self, reset: float, remaining: int | None, now: float, wall: float) -> None:
        """``wall``: the server's clock now (as far as its answers tell)."""
        if self.reset is not None and reset < self.reset - 1e-3:
            return  # a late answer from an older window: it says nothing about the current one
        self._learn_window(reset - wall)  # a window lasts at least what one had left
        if self.reset is None or reset > self.reset + 1e-3:  # a newer window
            if self.reset is not None:
                self._gap = min(self._gap, reset - self.reset)
                # The share of the window just ended that was spent, if this one follows it (just
                # after a reset, a key spent to the reset read 0.67: its calls had waited for it).
                left, limit = self.remaining, self.limit
                follows = reset - self.reset <= 1.5 * self.window
                self._last_spent = 1 - left / limit if follows and left is not None and limit else 0.0
            self.reset, self.reset_at, self.remaining = reset, now + (reset - wall), remaining
        elif remaining is not None:  # the same window, answers out of order: trust the lowest
            self.remaining = remaining if self.remaining is None else min(self.remaining, remaining)


def _rate_headers(headers: Mapping[str, str]) -> tuple[int | None, int | None, float | None]:
    """``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` (epoch seconds); ``None`` when absent or bad."""

    def number(name: str, kind: Callable[[str], Any]) -> Any:
        value = headers.get(name)
        try:
            return None if value is None else kind(value)
        except ValueError:
            return None

    limit, remaining = number("x-ratelimit-limit", int), number("x-ratelimit-remaining", int)
    reset = number("x-ratelimit-reset", float)
    if reset is not None and not 1e9 < reset < 1e11:  # not an epoch time: unusable
        reset = None
    return (limit if limit and limit > 0 else None), remaining, reset
