"""Retry policy: jittered exponential backoff for what is retryable, honouring ``Retry-After``."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from .errors import VanceError

DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0


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


def retrying(policy: RetryPolicy) -> AsyncRetrying:
    """A tenacity loop for one logical call: ``async for attempt in retrying(p): with attempt: ...``."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return retry_delay(state.attempt_number - 1, getattr(exc, "retry_after", None), policy)

    return AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )
