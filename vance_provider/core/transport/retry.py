"""Retry policy: jittered exponential backoff for what is retryable, honouring ``Retry-After``.

A 429 (the key's request rate or the account's concurrency cap) is not a failure of the call:
it never uses up one of ``max_attempts``; the call waits and tries again until
``rate_limit_deadline`` seconds have passed since its first 429.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from ...defaults import DEFAULT_MAX_RETRIES
from ..api.errors import ConcurrencyLimitedError, RateLimitedError, VanceError

DEFAULT_MAX_ATTEMPTS = DEFAULT_MAX_RETRIES + 1  # the first try, then the retries
DEFAULT_RATE_LIMIT_DEADLINE = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries for transient errors (5xx, timeouts, dropped connections); 429s do
    not count, but a call gives up ``rate_limit_deadline`` seconds after its first 429.
    ``max_attempts=1`` turns every retry off, 429s included."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0
    rate_limit_deadline: float = DEFAULT_RATE_LIMIT_DEADLINE


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(attempt: int, retry_after: float | None, policy: RetryPolicy) -> float:
    """``Retry-After`` when the service gives a sane one, else jittered exponential backoff."""
    if retry_after is not None and 0 < retry_after <= policy.max_retry_after:
        return retry_after
    return min(policy.initial * 2**attempt, policy.max_delay) * (1 - 0.25 * random.random())


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, VanceError) and exc.retryable


def is_limited(exc: BaseException | None) -> bool:
    """A 429: the key's request rate or the account's concurrency cap. Waited out, never counted."""
    return isinstance(exc, (RateLimitedError, ConcurrencyLimitedError))


def retrying(policy: RetryPolicy, *, paced: bool = False) -> AsyncRetrying:
    """A tenacity loop for one logical call: ``async for attempt in retrying(p): with attempt: ...``.

    ``paced``: the caller's rate gate saw the ``429 rate_limited`` and holds the next attempt
    itself (until ``Retry-After``, then one caller at a time), so this loop does not sleep too.
    """
    failures = 0  # attempts used up by errors other than 429
    first_limited: float | None = None

    def note(state: RetryCallState) -> None:  # once per failed attempt, before wait and stop
        nonlocal failures, first_limited
        if is_limited(_error(state)):
            first_limited = first_limited if first_limited is not None else time.monotonic()
        else:
            failures += 1

    def stop(state: RetryCallState) -> bool:
        if policy.max_attempts <= 1:
            return True
        if is_limited(_error(state)):
            assert first_limited is not None
            return time.monotonic() - first_limited >= policy.rate_limit_deadline
        return failures >= policy.max_attempts

    def wait(state: RetryCallState) -> float:
        exc = _error(state)
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, RateLimitedError) and paced:
            return 0.0
        if is_limited(exc):  # spread out, so the callers it refused do not all come back at once
            return retry_delay(failures, retry_after, policy) * (1 + 0.5 * random.random())
        return retry_delay(failures - 1, retry_after, policy)

    return AsyncRetrying(
        stop=stop,
        wait=wait,
        after=note,
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None
