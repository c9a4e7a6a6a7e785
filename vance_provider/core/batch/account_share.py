"""A batch's share of the account it runs on, with every other worker of that account: a job
slot while each job lives on the service (where the account's job cap is configured), and the
job's credits in a named account budget: reserved before the job is created, settled on its
charge, released when it fails, is canceled or refused (see ``docs/account.md``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ..account import (
    Account,
    AccountStoreUnavailableError,
    BudgetExhaustedError,
    Reservation,
    UnknownBudgetError,
)
from ..api.errors import BudgetExceededError, ConfigurationError, VanceError
from ..api.models import credits_text

log = logging.getLogger("vance_provider.batch")


class AccountShare:
    """The account calls of one batch run. ``account`` None: this process only (no store);
    ``budget`` None: no named budget (slots are still shared)."""

    def __init__(self, account: Account | None, budget: str | None, holder: str) -> None:
        self.account, self.budget, self.holder = account, budget, holder
        self._reserved: dict[str, Reservation] = {}  # source -> its job's credits in the budget
        self._tasks: set[asyncio.Task[None]] = set()

    async def check_budget(self, need: float, count: int, *, partial: bool) -> None:
        """The named budget must exist and, unless a partial batch is allowed, hold the batch's
        estimate (what other workers spend meanwhile is checked job by job, at each reserve)."""
        name = self.budget
        if name is None:
            return
        if self.account is None:
            raise ConfigurationError(
                f"the batch draws on the account budget {name!r}, but no account store is in use",
                hint="set account_store (or VANCE_ACCOUNT_STORE) to local, redis://... or postgresql://...",
            )
        state = await self.account.get_budget(name)
        if state is None:
            raise UnknownBudgetError(name)
        if need > state.remaining + 1e-9 and not partial:
            raise BudgetExceededError(
                f"the batch needs about {credits_text(need)} credits for {count} item(s); the account "
                f"budget {name!r} has {credits_text(state.remaining)} left",
                hint="raise it (vance budget set), shrink the batch, or use on_insufficient_credits='partial'",
            )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the account's job slots, shared with every worker, while a job lives on the
        service (only where the account's job cap is configured: else each process learns it)."""
        if self.account is None or self.account.max_jobs is None:
            yield
            return
        async with self.account.slot(self.holder):
            yield

    async def reserve(self, source: str, estimate: float) -> None:
        """Set the job's credits aside in the named budget (once per source). Raises
        :class:`BudgetExhaustedError` when the budget is spent, or
        :class:`AccountStoreUnavailableError`: a budget that cannot be reserved is not spent."""
        if self.budget is None or self.account is None or source in self._reserved:
            return
        self._reserved[source] = await self.account.reserve(estimate, budget=self.budget, holder=self.holder)

    async def release(self, source: str) -> None:
        """The job was not created, failed or was refunded: its reservation goes back at once."""
        reservation = self._reserved.pop(source, None)
        if reservation is not None and self.account is not None:
            await self.account.release_reservation(reservation)

    def release_soon(self, source: str) -> None:
        """:meth:`release`, from code that cannot wait (it runs in the background)."""
        reservation = self._reserved.pop(source, None)
        if reservation is not None and self.account is not None:
            task = asyncio.get_running_loop().create_task(self.account.release_reservation(reservation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def record(self, source: str) -> dict[str, Any] | None:
        """The reservation of ``source``'s job as the manifest keeps it, so that a process that
        takes the job over (:meth:`take_over`) holds the same credits."""
        reservation = self._reserved.get(source)
        if reservation is None:
            return None
        return {"id": reservation.id, "budget": reservation.budget, "credits": reservation.credits}

    def hand_over(self) -> None:
        """The batch goes on in another process of the same run, which takes over the jobs'
        reservations from the manifest: this one neither renews nor releases them any more (each
        expires after its lease time unless taken over)."""
        if self.account is not None:
            for reservation in self._reserved.values():
                self.account.detach(reservation)
        self._reserved.clear()

    async def take_over(self, source: str, record: dict[str, Any]) -> None:
        """Hold the reservation another process of this run handed over for ``source``'s job, so
        the job's credits stay set aside in the budget until it is settled here."""
        if self.budget is None or self.account is None or source in self._reserved:
            return
        try:
            reservation = Reservation(
                str(record["id"]), str(record["budget"]), float(record["credits"]), self.holder, 0.0
            )
        except (KeyError, TypeError, ValueError):
            log.warning("%s: the reservation recorded for its job is unreadable; ignored", source)
            return
        self._reserved[source] = await self.account.adopt(reservation)

    async def settle(self, source: str, cost: float, *, paid_here: bool) -> None:
        """Record the charge in the named budget. A job this run did not reserve for (resumed
        from another run) is recorded too, when it was paid during this run."""
        name, account = self.budget, self.account
        if name is None or account is None:
            return
        reservation = self._reserved.pop(source, None)
        if not paid_here:
            if reservation is not None:
                await account.release_reservation(reservation)
            return
        if reservation is None:
            try:
                reservation = await account.reserve(0.0, budget=name, holder=self.holder)
            except VanceError as exc:
                log.warning("%s: its charge could not be recorded in the budget %r: %s", source, name, exc)
                return
        await account.settle(reservation, cost)


#: What :meth:`AccountShare.reserve` raises for a job that must not be created.
NOT_RESERVED = (BudgetExhaustedError, AccountStoreUnavailableError)

__all__ = ["NOT_RESERVED", "AccountShare"]
