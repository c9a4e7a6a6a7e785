"""The store operations for stores that keep an account's state whole (see :mod:`.state`):
a subclass says only how to run one function atomically on one account's state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from . import state as ops
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
    check_budget,
)
from .state import AccountState

T = TypeVar("T")


class WholeStateStore:
    """Implements :class:`~.store.AccountStore` over :meth:`_apply`."""

    description = "?"

    async def _apply(self, account: str, operation: str, fn: Callable[[AccountState, float], T]) -> T:
        """Run ``fn(state, now)`` atomically on the account's state and keep what it changed."""
        raise NotImplementedError

    async def _read(self, account: str, operation: str, fn: Callable[[AccountState, float], T]) -> T:
        return await self._apply(account, operation, fn)  # reads purge expired leases: a write too

    async def take_request(
        self, account: str, default: Rate, margin: float, burst: int, count: int = 1, ahead: float = 0.0
    ) -> Grant:
        return await self._apply(
            account,
            "pace a request",
            lambda s, now: ops.take_request(s, now, default, margin, burst, count, ahead),
        )

    async def learn_rate(
        self,
        account: str,
        limit: int | None,
        window: float | None,
        block_for: float | None,
        seen: WindowSeen | None = None,
    ) -> RateState:
        return await self._apply(
            account, "record the rate", lambda s, now: ops.learn_rate(s, now, limit, window, block_for, seen)
        )

    async def rate_state(self, account: str) -> RateState:
        return await self._read(account, "read the rate", ops.rate_state)

    async def acquire_slot(
        self, account: str, holder: str, ttl: float, default_capacity: int, wait_ttl: float = WAIT_TTL
    ) -> SlotLease | float:
        return await self._apply(
            account,
            "take a job slot",
            lambda s, now: ops.acquire_slot(s, now, holder, ttl, default_capacity, wait_ttl),
        )

    async def renew_slots(self, account: str, ids: Sequence[str], ttl: float) -> list[str]:
        return await self._apply(account, "renew job slots", lambda s, now: ops.renew_slots(s, now, ids, ttl))

    async def release_slot(self, account: str, lease_id: str) -> None:
        await self._apply(account, "release a job slot", lambda s, now: ops.release_slot(s, lease_id))

    async def set_capacity(self, account: str, capacity: int) -> None:
        def apply(s: AccountState, now: float) -> None:
            s.capacity = max(1, int(capacity))

        await self._apply(account, "set the job capacity", apply)

    async def slot_state(self, account: str, default_capacity: int) -> SlotState:
        return await self._read(
            account, "read the job slots", lambda s, now: ops.slot_state(s, now, default_capacity)
        )

    async def reserve(
        self, account: str, budget: str, credits: float, holder: str, ttl: float
    ) -> Reservation:
        return await self._apply(
            account, "reserve credits", lambda s, now: ops.reserve(s, now, budget, credits, holder, ttl)
        )

    async def renew_reservations(
        self, account: str, reservations: Sequence[Reservation], ttl: float
    ) -> list[str]:
        return await self._apply(
            account,
            "renew credit reservations",
            lambda s, now: ops.renew_reservations(s, now, reservations, ttl),
        )

    async def settle(self, account: str, reservation: Reservation, actual: float) -> bool:
        return await self._apply(
            account, "record a charge", lambda s, now: ops.settle(s, now, reservation, actual)
        )

    async def release_reservation(self, account: str, reservation: Reservation) -> None:
        await self._apply(account, "release credits", lambda s, now: ops.release_reservation(s, reservation))

    async def set_budget(self, account: str, name: str, credits: float, period: str) -> BudgetState:
        check_budget(name, credits, period)
        return await self._apply(
            account, "set a budget", lambda s, now: ops.set_budget(s, now, name, credits, period)
        )

    async def delete_budget(self, account: str, name: str) -> bool:
        return await self._apply(account, "delete a budget", lambda s, now: ops.delete_budget(s, name))

    async def budgets(self, account: str) -> list[BudgetState]:
        return await self._read(account, "read the budgets", ops.budgets)

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"
