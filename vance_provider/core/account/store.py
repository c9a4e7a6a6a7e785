"""The account store's interface: a few atomic operations on an account's shared state.

Every operation is atomic across all the processes that share the store, and judges time by
the store's own clock (``now``), never by a worker's: leases expire and rates pace by one clock.
Four implementations: :class:`~.memory.MemoryStore` (one process), :class:`~.sqlite.SqliteStore`
(every process on one machine), :class:`~.redis_store.RedisStore` and
:class:`~.postgres.PostgresStore` (many machines).

A store raises :class:`~.errors.AccountStoreUnavailableError` when it cannot be reached; the
:class:`~.account.Account` above it decides what that means (see ``docs/account.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .models import (
    WAIT_TTL,
    BudgetState,
    Grant,
    Rate,
    RateState,
    Reservation,
    SlotLease,
    SlotState,
    WindowSeen,
)


@runtime_checkable
class AccountStore(Protocol):
    """Shared state of VanceAI accounts, each keyed by its id (a hash; see ``account_id``)."""

    #: What the store is, for messages: its URL without any password.
    description: str

    # --- request rate (a GCRA: one request every ``margin * window / limit`` seconds) ------------
    async def take_request(
        self, account: str, default: Rate, margin: float, burst: int, count: int = 1, ahead: float = 0.0
    ) -> Grant:
        """Take up to ``count`` request slots at the account's pace, each at most ``ahead``
        seconds from now (0: only a slot free now); if none, say how long to wait."""
        ...

    async def learn_rate(
        self,
        account: str,
        limit: int | None,
        window: float | None,
        block_for: float | None,
        seen: WindowSeen | None = None,
    ) -> RateState:
        """Publish a rate the service revealed; ``block_for``: no request for that many seconds;
        ``seen``: what an answer said of its window (the account spends what it has left)."""
        ...

    async def rate_state(self, account: str) -> RateState: ...

    # --- jobs in flight (leased slots) -----------------------------------------------------------
    async def acquire_slot(
        self, account: str, holder: str, ttl: float, default_capacity: int, wait_ttl: float = WAIT_TTL
    ) -> SlotLease | float:
        """A lease on a free slot; else 0.0 if the next slot freed is ``holder``'s (look again
        soon), or the seconds until the earliest lease expires.

        Free slots are shared fairly between holders: one goes to ``holder`` only if, handed out
        one at a time to the waiting holder with the fewest slots (the longest waiting among
        equals), one would go to it (see ``state.ahead_of``). A holder refused is registered as
        waiting for ``wait_ttl`` seconds (each ask renews it; a grant ends it)."""
        ...

    async def renew_slots(self, account: str, ids: Sequence[str], ttl: float) -> list[str]:
        """Extend leases by ``ttl`` from now; returns the ids found expired (lost)."""
        ...

    async def release_slot(self, account: str, lease_id: str) -> None: ...

    async def set_capacity(self, account: str, capacity: int) -> None: ...

    async def slot_state(self, account: str, default_capacity: int) -> SlotState: ...

    # --- credit budgets --------------------------------------------------------------------------
    async def reserve(
        self, account: str, budget: str, credits: float, holder: str, ttl: float
    ) -> Reservation:
        """Set credits aside, atomically; raises ``BudgetExhaustedError`` or ``UnknownBudgetError``."""
        ...

    async def renew_reservations(
        self, account: str, reservations: Sequence[Reservation], ttl: float
    ) -> list[str]: ...

    async def settle(self, account: str, reservation: Reservation, actual: float) -> bool:
        """Charge ``actual`` credits to the budget and drop the reservation; False if the
        reservation had already expired (the charge is recorded all the same)."""
        ...

    async def release_reservation(self, account: str, reservation: Reservation) -> None: ...

    async def set_budget(self, account: str, name: str, credits: float, period: str) -> BudgetState: ...

    async def delete_budget(self, account: str, name: str) -> bool: ...

    async def budgets(self, account: str) -> list[BudgetState]: ...

    async def close(self) -> None: ...


__all__ = ["AccountStore"]
