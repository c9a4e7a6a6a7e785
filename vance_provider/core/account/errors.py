"""The account store's errors: each says what failed and what to do, and none carries a token."""

from __future__ import annotations

from ..api.errors import BudgetExceededError, ConfigurationError, VanceError
from ..api.models import credits_text


class AccountStoreUnavailableError(VanceError):
    """The account store (SQLite file, Redis or PostgreSQL server) could not be reached or used.

    A budget is never spent on credit while the store is down: :meth:`Account.reserve` raises
    this error and nothing is charged. The request rate and the jobs in flight fall back to
    per-process limits instead (with one warning), and use the store again once it is back.
    """

    retryable = True

    def __init__(self, store: str, operation: str, cause: str) -> None:
        self.store, self.operation, self.cause = store, operation, cause
        super().__init__(
            f"the account store {store} could not {operation}: {cause}",
            hint=_hint(store),
        )


def _hint(store: str) -> str:
    if store.startswith(("redis", "rediss", "unix")):
        return (
            "check that the Redis server is running and reachable from this worker (redis-cli -u URL "
            "ping), or choose another store with VANCE_ACCOUNT_STORE (docs/account.md)"
        )
    if store.startswith("postgres"):
        return (
            "check that the PostgreSQL server is running and reachable from this worker (psql URL "
            "-c 'select 1'), and that its user may use the table vance_account_state (or create it), "
            "or choose another store with VANCE_ACCOUNT_STORE (docs/account.md)"
        )
    return (
        "check that the store's folder exists and is writable, and that its disk is not full; "
        "VANCE_ACCOUNT_STORE=sqlite:///other/path chooses another file (docs/account.md)"
    )


class BudgetExhaustedError(BudgetExceededError):
    """A reservation would take a named account-wide budget over its credits; nothing was reserved.

    ``remaining`` is what the budget still has (its credits less what was spent and what running
    jobs have reserved) in the current ``period``.
    """

    def __init__(
        self,
        budget: str,
        *,
        requested: float,
        credits: float,
        spent: float,
        reserved: float,
        period: str,
        period_key: str,
    ) -> None:
        self.budget, self.requested, self.credits = budget, requested, credits
        self.spent, self.reserved, self.period, self.period_key = spent, reserved, period, period_key
        self.remaining = max(0.0, credits - spent - reserved)
        when = "in total" if period == "total" else f"for {period_key}"
        super().__init__(
            f"budget {budget!r} cannot cover {credits_text(requested)} credits: "
            f"{credits_text(self.remaining)} of {credits_text(credits)} left {when} "
            f"({credits_text(spent)} spent, {credits_text(reserved)} reserved by jobs in flight)",
            hint=(
                f"raise it with `vance budget set {budget} CREDITS --period {period}`"
                + ("" if period == "total" else f", or wait for the next {period}")
            ),
        )


class UnknownBudgetError(ConfigurationError):
    """A reservation names a budget that was never set for this account."""

    def __init__(self, budget: str) -> None:
        self.budget = budget
        super().__init__(
            f"no budget named {budget!r} is set for this account",
            hint=f"set it first: `vance budget set {budget} CREDITS --period day|month|total`",
        )


__all__ = ["AccountStoreUnavailableError", "BudgetExhaustedError", "UnknownBudgetError"]
