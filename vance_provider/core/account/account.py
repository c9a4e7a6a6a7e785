"""The account: one VanceAI account's shared request rate, jobs in flight and credit budgets,
as every worker that uses it sees them (see ``docs/account.md``).

The engine calls :meth:`Account.acquire_request` before each HTTP call, :meth:`Account.learn`
after each answer that carries rate headers, :meth:`Account.acquire_slot` /
:meth:`Account.release` around each job (from its creation to its end), and
:meth:`Account.reserve` / :meth:`Account.settle` / :meth:`Account.release` around each job's
credits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ..api.errors import ConfigurationError
from .errors import AccountStoreUnavailableError
from .identity import account_id, default_holder
from .memory import MemoryStore
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
from .store import AccountStore
from .urls import open_store

log = logging.getLogger("vance_provider.account")
T = TypeVar("T")

#: The pace before any answer has told the account's rate: half the documented ~60 a minute, for
#: all the account's workers together, so N workers starting at once do not burn the first window.
DEFAULT_RATE = Rate(limit=30, window=60.0)
MARGIN = 1.05  # pace this much under the learned rate
DEFAULT_CAPACITY = 16  # jobs in flight account-wide until configured or lowered by a refusal
SLOT_TTL = 30.0  # seconds a slot lives without a heartbeat: a killed worker's slots return then
RESERVATION_TTL = 60.0  # the same for credit reservations
RECHECK_AFTER = 5.0  # seconds before a store found down is tried again for the rate and slots
MAX_BLOCK = 3600.0  # a Retry-After / reset longer than this is not believed
POLL = 0.05  # seconds between two looks for a free slot held by another process (one task each)
#: Request slots are taken from the store up to this many seconds before they are due (so the round
#: trip is not on the pace's path), and up to REQUEST_BATCH at once for this process's waiting calls.
REQUEST_AHEAD = 0.1
REQUEST_BATCH = 8

_warned: set[str] = set()  # stores this process has warned about (one warning per store)


class Account:
    """The shared state of one account, through one store. Make one with :func:`open_account`.

    Use it from one event loop (the heartbeat that renews leases runs there); close it (or use
    ``async with``) to give back what it holds at once instead of after the leases' ttl.
    """

    def __init__(
        self,
        account: str,
        store: AccountStore,
        *,
        budget: str | None = None,
        max_jobs: int | None = None,
        default_rate: Rate = DEFAULT_RATE,
        margin: float = MARGIN,
        burst: int = 1,
        default_capacity: int = DEFAULT_CAPACITY,
        slot_ttl: float = SLOT_TTL,
        reservation_ttl: float = RESERVATION_TTL,
        wait_ttl: float = WAIT_TTL,
        recheck_after: float = RECHECK_AFTER,
        poll: float = POLL,
        request_ahead: float = REQUEST_AHEAD,
        request_batch: int = REQUEST_BATCH,
        holder: str | None = None,
    ) -> None:
        if budget is not None:
            check_budget(budget)
        self.id = account
        self.store = store
        self.budget = budget
        self.default_rate, self.margin, self.burst = default_rate, margin, max(1, int(burst))
        self.default_capacity = default_capacity
        self.slot_ttl, self.reservation_ttl, self.wait_ttl = slot_ttl, reservation_ttl, wait_ttl
        self.recheck_after, self.poll = recheck_after, poll
        self.request_ahead, self.request_batch = max(0.0, request_ahead), max(1, int(request_batch))
        self.holder = holder or default_holder()
        self.max_jobs = max_jobs  # the account's job cap as configured here (None: not shared)
        self._capacity_to_set = max_jobs
        self._fallback = MemoryStore(description=f"per-process fallback for {store.description}")
        self._down_until = 0.0  # monotonic: the store is not tried for rate and slots before this
        self._down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._request_lock = asyncio.Lock()
        self._request_waiting = 0  # calls of this process waiting for a request slot
        # request slots taken from the store for calls waiting here: (due, monotonic; store clock)
        self._request_slots: collections.deque[tuple[float, float]] = collections.deque()
        self._blocked_until = 0.0  # monotonic: a 429's block this process knows of
        # holder -> its tasks' turn to ask the store, and how many of its tasks ask (gone at none)
        self._slot_queues: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._slot_freed = asyncio.Event()
        self._slots: dict[str, SlotLease] = {}
        self._reservations: dict[str, Reservation] = {}
        self._unsettled: list[tuple[Reservation, float]] = []  # charges the store was down for
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Account(id={self.id[:12]}..., store={self.store.description})"

    async def __aenter__(self) -> Account:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the store, or the per-process fallback while it is down -----------------------------------
    @property
    def degraded(self) -> bool:
        """True while the store is down and the rate and slots are per-process."""
        return self._down

    async def _shared(self, fn: Callable[[AccountStore], Awaitable[T]]) -> tuple[T, bool]:
        """``fn`` on the store; on the per-process fallback while the store is down. Returns
        (result, whether the fallback gave it)."""
        if self._down and time.monotonic() < self._down_until:
            return await fn(self._fallback), True
        try:
            result = await fn(self.store)
        except AccountStoreUnavailableError as exc:
            self._store_down(exc)
            return await fn(self._fallback), True
        if self._down:
            self._down = False
            log.info(
                "account store %s is back: the request rate and jobs in flight are account-wide again",
                self.store.description,
            )
        return result, False

    def _store_down(self, exc: AccountStoreUnavailableError) -> None:
        self._down, self._down_until = True, time.monotonic() + self.recheck_after
        if self.store.description not in _warned:
            _warned.add(self.store.description)
            log.warning(
                "%s. Until it is back, this process paces its requests and limits its jobs in flight "
                "on its own (other workers are not counted), and refuses to reserve budget credits; "
                "it tries the store again every %g s.",
                exc,
                self.recheck_after,
            )
        else:
            log.debug("account store still unavailable: %s", exc)

    def _bind_loop(self) -> None:
        """The asyncio primitives belong to one event loop: make new ones in a new loop."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop = loop
            self._request_lock, self._slot_freed = asyncio.Lock(), asyncio.Event()
            self._request_waiting = 0
            self._request_slots.clear()
            self._slot_queues = {}
            self._heartbeat = None

    def _ensure_heartbeat(self) -> None:
        self._bind_loop()
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(), name="vance-account-heartbeat"
            )

    async def _beat(self) -> None:
        """Renew every held lease a few times per ttl, and send charges the store missed."""
        while self._slots or self._reservations or self._unsettled:
            await asyncio.sleep(min(self.slot_ttl, self.reservation_ttl) / 3)
            try:
                await self.renew()
            except Exception:  # the heartbeat must outlive a bad answer, or every lease would lapse
                log.exception("renewing the account's leases failed; trying again")

    async def renew(self) -> None:
        """Renew the leases this account holds now (the heartbeat does it on its own)."""
        for fallback in (False, True):
            held = [s for s in self._slots.values() if s.fallback is fallback]
            if not held:
                continue
            store = self._fallback if fallback else self.store
            try:
                lost = await store.renew_slots(self.id, [s.id for s in held], self.slot_ttl)
            except AccountStoreUnavailableError as exc:
                self._store_down(exc)
                continue
            for lease_id in lost:
                lease = self._slots.pop(lease_id, None)
                if lease is not None:
                    lease.lost = True
                    log.warning(
                        "a job slot of this worker expired before it was renewed (the worker was "
                        "paused or cut off from the account store for over %.0f s): it no longer "
                        "counts among the account's jobs in flight",
                        self.slot_ttl,
                    )
        if self._reservations:
            held_r = list(self._reservations.values())
            try:
                lost = await self.store.renew_reservations(self.id, held_r, self.reservation_ttl)
            except AccountStoreUnavailableError as exc:
                log.debug("could not renew credit reservations: %s", exc)
                lost = []
            for rid in lost:
                r = self._reservations.pop(rid, None)
                if r is not None:
                    r.lost = True
                    log.warning(
                        "a reservation of %s credits on budget %r expired before it was renewed: "
                        "other workers may now reserve them",
                        r.credits,
                        r.budget,
                    )
        await self._send_unsettled()

    async def _send_unsettled(self) -> None:
        while self._unsettled:
            reservation, actual = self._unsettled.pop(0)  # taken first: two senders never send one twice
            try:
                await self.store.settle(self.id, reservation, actual)
            except AccountStoreUnavailableError:
                self._unsettled.insert(0, (reservation, actual))
                return

    # --- request rate ------------------------------------------------------------------------------
    async def acquire_request(self) -> float:
        """Wait until the account's rate lets one more request go (call before each HTTP call).
        Returns when it was granted, on the store's clock (epoch seconds).

        The store hands out request slots: times at which a request may go, paced for every
        worker of the account together. This process takes them up to ``request_ahead`` seconds
        before they are due, one for each of its calls waiting (at most ``request_batch``), in
        one round trip, and each call sleeps until its own."""
        self._bind_loop()
        while True:
            due, at = await self._request_slot()
            if due > (now := time.monotonic()):
                await asyncio.sleep(due - now)
            if due >= self._blocked_until:  # else a 429 came meanwhile: its block holds this one
                return at

    async def _request_slot(self) -> tuple[float, float]:
        """The next request slot of this process (due: monotonic; store clock)."""
        self._request_waiting += 1
        served, cancels = False, _cancels()
        try:
            async with self._request_lock:  # one task of this process asks the store at a time
                while True:
                    _raise_if_canceled(cancels)
                    while self._request_slots:
                        due, at = self._request_slots.popleft()
                        if time.monotonic() <= due + self.request_ahead and due >= self._blocked_until:
                            served = True
                            return due, at
                        # Not handed out in time, or inside a block: dropped.
                    count = min(self._request_waiting, self.request_batch)
                    grant, _ = await self._shared(self._take(count))
                    received = time.monotonic()
                    if not grant.granted:
                        await asyncio.sleep(min(grant.wait, self.recheck_after))
                        continue
                    # The store's clock to this machine's: from the answer's arrival (never early).
                    slots = grant.slots or (grant.at + grant.wait,)
                    self._request_slots.extend((received + at - grant.at, at) for at in slots[1:])
                    served = True
                    return received + slots[0] - grant.at, slots[0]
        finally:
            self._request_waiting -= 1
            if not served and len(self._request_slots) > self._request_waiting:
                self._request_slots.pop()  # taken for this call, canceled: the latest is nobody's

    def _take(self, count: int) -> Callable[[AccountStore], Awaitable[Grant]]:
        def take(store: AccountStore) -> Awaitable[Grant]:
            return store.take_request(
                self.id, self.default_rate, self.margin, self.burst, count, self.request_ahead
            )

        return take

    async def learn(
        self,
        limit: int | None = None,
        window: float | None = None,
        retry_after: float | None = None,
        reset_epoch: float | None = None,
        seen: WindowSeen | None = None,
    ) -> None:
        """Publish what an answer revealed: ``limit`` requests per ``window`` seconds (from
        ``X-RateLimit-Limit`` and the window length), and on a 429 its ``retry_after`` seconds
        and ``X-RateLimit-Reset`` (``reset_epoch``): no worker sends before then. ``seen``: what
        a successful answer said of a newer window than this process told before (its
        ``X-RateLimit-Reset``, ``-Remaining`` and seconds left, and when the account granted the
        answered request): every worker spends what it has left at once."""
        block: float | None = None
        if retry_after is not None:
            block = max(0.0, retry_after)
            if reset_epoch is not None:
                block = max(block, reset_epoch - time.time())
            block = min(block, MAX_BLOCK)
        limit = limit if limit and limit > 0 else None
        window = window if window and window > 0 else None
        if limit is None and window is None and not block and seen is None:
            return
        await self._fallback.learn_rate(self.id, limit, window, block, seen)
        state, _ = await self._shared(lambda st: st.learn_rate(self.id, limit, window, block, seen))
        if block:  # slots this process took before the block, and due within it, are void
            self._blocked_until = max(self._blocked_until, time.monotonic() + state.blocked_until - state.now)

    async def rate_state(self) -> RateState:
        state, _ = await self._shared(lambda st: st.rate_state(self.id))
        return state

    # --- jobs in flight ----------------------------------------------------------------------------
    async def acquire_slot(self, holder: str | None = None) -> SlotLease:
        """Wait for one of the account's job slots, and hold it (renewed by a heartbeat) until
        :meth:`release`; a killed worker's slots return after ``slot_ttl`` seconds."""
        who = holder or self.holder
        if self._capacity_to_set is not None:
            capacity, self._capacity_to_set = self._capacity_to_set, None
            await self.set_capacity(capacity)
        self._bind_loop()
        # One task of this process per holder asks the store at a time, the others queue behind it
        # (first come, first served): N processes poll the store N times per ``poll``, not once per
        # task. The store shares the slots fairly between holders (see AccountStore.acquire_slot).
        queue, asking = self._slot_queues.setdefault(who, (asyncio.Lock(), [0]))
        asking[0] += 1
        cancels = _cancels()
        try:
            async with queue:
                while True:
                    _raise_if_canceled(cancels)
                    freed = self._slot_freed
                    result, fallback = await self._shared(
                        lambda st: st.acquire_slot(
                            self.id, who, self.slot_ttl, self.default_capacity, self.wait_ttl
                        )
                    )
                    if isinstance(result, SlotLease):
                        result.fallback = fallback
                        self._slots[result.id] = result
                        self._ensure_heartbeat()
                        return result
                    # A slot of this process freed: look at once. (asyncio.timeout, not wait_for:
                    # on Python 3.11 wait_for can swallow a cancel, and this loop would go on.)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.01, min(result, self.poll))):
                            await freed.wait()
        finally:
            asking[0] -= 1
            if not asking[0] and self._slot_queues.get(who, (None,))[0] is queue:
                del self._slot_queues[who]  # a run that ended leaves nothing behind

    async def release_slot(self, lease: SlotLease) -> None:
        """Give a slot back (the job reached its end, or was never created)."""
        if lease.released:
            return
        lease.released = True
        self._slots.pop(lease.id, None)
        store = self._fallback if lease.fallback else self.store
        try:
            await store.release_slot(self.id, lease.id)
        except AccountStoreUnavailableError as exc:
            log.debug("could not release a job slot (it expires on its own): %s", exc)
        self._slot_freed.set()
        self._slot_freed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def slot(self, holder: str | None = None) -> AsyncIterator[SlotLease]:
        """``async with account.slot():`` hold a job slot for the block."""
        lease = await self.acquire_slot(holder)
        try:
            yield lease
        finally:
            await self.release_slot(lease)

    async def set_capacity(self, capacity: int) -> None:
        """Set how many jobs the account may have in flight, for every worker."""
        if capacity < 1:
            raise ConfigurationError(f"bad job capacity {capacity!r}", hint="at least 1")
        await self._fallback.set_capacity(self.id, capacity)
        await self._shared(lambda st: st.set_capacity(self.id, capacity))

    async def concurrency_refused(self) -> int:
        """The service refused a job for too many in flight: lower the account's capacity to one
        less than the slots held now (at least 1). Returns the new capacity."""
        state = await self.slot_state()
        capacity = max(1, min(state.capacity, state.in_use - 1))
        await self.set_capacity(capacity)
        return capacity

    async def slot_state(self) -> SlotState:
        state, _ = await self._shared(lambda st: st.slot_state(self.id, self.default_capacity))
        return state

    # --- credit budgets ----------------------------------------------------------------------------
    async def reserve(
        self, credits: float, *, budget: str | None = None, holder: str | None = None
    ) -> Reservation:
        """Set ``credits`` aside in the budget (``budget``, else the account's), atomically for all
        workers. Raises :class:`BudgetExhaustedError` when they would take it over its credits,
        :class:`AccountStoreUnavailableError` when the store cannot be reached (nothing is spent)."""
        name = budget or self.budget
        if not name:
            raise ConfigurationError(
                "no budget to reserve credits in",
                hint="open_account(..., budget='NAME') or reserve(..., budget=)",
            )
        check_budget(name, credits)
        reservation = await self.store.reserve(
            self.id, name, float(credits), holder or self.holder, self.reservation_ttl
        )
        self._reservations[reservation.id] = reservation
        self._ensure_heartbeat()
        return reservation

    async def settle(self, reservation: Reservation, actual: float) -> None:
        """Record the charge of the job a reservation was for (``actual`` credits, which may
        differ from those reserved) and drop the reservation. If the store is down, the charge is
        kept and sent when it is back (by the heartbeat, or :meth:`close`)."""
        if reservation.done:
            return
        reservation.done = True
        self._reservations.pop(reservation.id, None)
        try:
            await self.store.settle(self.id, reservation, float(actual))
        except AccountStoreUnavailableError as exc:
            self._unsettled.append((reservation, float(actual)))
            self._ensure_heartbeat()
            log.warning("a charge of %s credits is kept until the store is back: %s", actual, exc)

    async def release_reservation(self, reservation: Reservation) -> None:
        """Give reserved credits back (the job failed, was refunded or canceled)."""
        if reservation.done:
            return
        reservation.done = True
        self._reservations.pop(reservation.id, None)
        try:
            await self.store.release_reservation(self.id, reservation)
        except AccountStoreUnavailableError as exc:
            log.debug("could not release a reservation (it expires on its own): %s", exc)

    def detach(self, reservation: Reservation) -> None:
        """Stop renewing a reservation that another process of the same run takes over (a batch
        handed from an Airflow worker to the triggerer): it is neither released nor renewed here,
        and it expires after ``reservation_ttl`` unless that process takes it over with :meth:`adopt`."""
        self._reservations.pop(reservation.id, None)

    async def adopt(self, reservation: Reservation) -> Reservation:
        """Take over a reservation made by another process (see :meth:`detach`): this account's
        heartbeat renews it from now on. One that expired meanwhile is marked ``lost`` (its credits
        may have gone to other workers); :meth:`settle` still records its charge."""
        try:
            lost = await self.store.renew_reservations(self.id, [reservation], self.reservation_ttl)
        except AccountStoreUnavailableError as exc:
            log.debug("could not renew an adopted reservation now (the heartbeat tries again): %s", exc)
            lost = []
        if reservation.id in lost:
            reservation.lost = True
            log.warning(
                "a reservation of %s credits on budget %r expired before this process took it over: "
                "other workers may have reserved them meanwhile",
                reservation.credits,
                reservation.budget,
            )
            return reservation
        self._reservations[reservation.id] = reservation
        self._ensure_heartbeat()
        return reservation

    async def release(self, held: SlotLease | Reservation) -> None:
        """Give back a slot or a reservation."""
        if isinstance(held, SlotLease):
            await self.release_slot(held)
        else:
            await self.release_reservation(held)

    async def set_budget(self, name: str, credits: float, period: str = "total") -> BudgetState:
        """Create or change a named budget: ``credits`` per ``period`` (``day``, ``month`` (UTC)
        or ``total``). Changing the credits keeps what was spent; changing the period starts afresh."""
        check_budget(name, credits, period)
        return await self.store.set_budget(self.id, name, float(credits), period)

    async def delete_budget(self, name: str) -> bool:
        return await self.store.delete_budget(self.id, name)

    async def budgets(self) -> list[BudgetState]:
        """Every budget of the account: credits, spent, reserved, remaining."""
        return await self.store.budgets(self.id)

    async def get_budget(self, name: str) -> BudgetState | None:
        return next((b for b in await self.budgets() if b.name == name), None)

    # --- the end -----------------------------------------------------------------------------------
    async def close(self) -> None:
        """Give back the slots and reservations still held, send kept charges, close the store."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeat
        for lease in list(self._slots.values()):
            await self.release_slot(lease)
        for reservation in list(self._reservations.values()):
            await self.release_reservation(reservation)
        with contextlib.suppress(AccountStoreUnavailableError):
            await self._send_unsettled()
        if self._unsettled:
            log.warning(
                "%d charge(s) could not be recorded in the account store %s (it is down): the "
                "budgets read them as unspent",
                len(self._unsettled),
                self.store.description,
            )
        await self.store.close()


def _cancels() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_if_canceled(before: int) -> None:
    """End a waiting loop whose task was asked to cancel since it began (``before``: the task's
    cancel requests then; code that cleans up after a cancel may wait here still): a cancel
    swallowed on its way (asyncio's ``wait_for`` on Python 3.11, or a client library) must not
    leave the loop asking forever."""
    if _cancels() > before:
        raise asyncio.CancelledError


def open_account(
    api_base_url: str,
    api_key: Any,
    store_url: str | None = None,
    *,
    budget: str | None = None,
    max_jobs: int | None = None,
    **options: Any,
) -> Account:
    """The shared state of the account behind ``api_key`` at ``api_base_url`` (the client's
    ``base_url``, e.g. ``https://cloud-vanceai.vanceai.com/api/v1``: every worker and the
    ``vance budget`` command must give the same one to share the state).

    ``store_url``: ``local`` (the default: a SQLite file in ``$XDG_STATE_HOME/vance``, for every
    process of this machine), ``sqlite:///path``, ``redis://host:6379/0`` or
    ``postgresql://user:pass@host/db`` (every machine), or
    ``none`` (this process only); when not given, ``$VANCE_ACCOUNT_STORE``. ``budget``: the named
    budget :meth:`Account.reserve` uses. ``max_jobs``: the account's jobs in flight, for every
    worker. ``options``: the other keywords of :class:`Account` (``slot_ttl``, ``default_rate``...).

    The key is only hashed (with the base URL) into the account's id; it is not kept.
    """
    return Account(
        account_id(api_base_url, api_key), open_store(store_url), budget=budget, max_jobs=max_jobs, **options
    )
