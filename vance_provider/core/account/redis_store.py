"""The store for many machines: a Redis server, every operation one Lua script (atomic, on the
server's clock). Keys are ``vance:{<account id>}:...``: the account's hash, never its key; the
``{...}`` hash tag keeps one account's keys in one slot of a Redis Cluster."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from ..api.errors import ConfigurationError
from ..secrets import redact_url
from . import lua
from .errors import AccountStoreUnavailableError, BudgetExhaustedError, UnknownBudgetError
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

CONNECT_TIMEOUT = 2.0  # seconds to open a connection to the server
SOCKET_TIMEOUT = 5.0  # seconds for one answer


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Account state in Redis, shared by every worker that reaches the server.

    ``clock``: only for tests, a function giving the time to use instead of the server's.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        socket_timeout: float = SOCKET_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigurationError(
                "the Redis account store needs the redis client",
                hint="pip install 'vance-pipelines[redis]'",
            ) from None
        self.description = redact_url(url)
        self._clock = clock
        self._client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 1),  # one retry: a connection the server closed (restart)
            decode_responses=False,
        )
        self._scripts = {
            name: self._client.register_script(getattr(lua, name))
            for name in (
                "TAKE_REQUEST",
                "LEARN_RATE",
                "RATE_STATE",
                "ACQUIRE_SLOT",
                "RENEW_SLOTS",
                "SLOT_STATE",
                "RESERVE",
                "RENEW_RESERVATIONS",
                "SETTLE",
                "SET_BUDGET",
                "READ_BUDGET",
            )
        }

    # --- plumbing ---------------------------------------------------------------------------------
    def _now(self) -> str:
        return "" if self._clock is None else repr(float(self._clock()))

    async def _call(self, operation: str, coro: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise AccountStoreUnavailableError(
                self.description, operation, f"{type(exc).__name__}: {redact_url(str(exc))}"
            ) from None

    async def _script(self, operation: str, name: str, keys: Sequence[str], *args: Any) -> Any:
        return await self._call(
            operation, self._scripts[name](keys=list(keys), args=[self._now(), *map(str, args)])
        )

    @staticmethod
    def _key(account: str, *parts: str) -> str:
        return ":".join(("vance", "{" + account + "}", *parts))

    def _slot_keys(self, account: str) -> list[str]:
        return [self._key(account, "slots"), self._key(account, "slot-holders"), self._key(account, "meta")]

    def _fair_keys(self, account: str) -> list[str]:
        """The slot keys and the waiting holders' (expiry, since when)."""
        return [
            *self._slot_keys(account),
            self._key(account, "slot-waiting"),
            self._key(account, "slot-since"),
        ]

    def _budget_keys(self, account: str, name: str) -> list[str]:
        return [
            self._key(account, "budget", name),
            self._key(account, "budget", name, "expiry"),
            self._key(account, "budget", name, "reservations"),
        ]

    # --- rate -------------------------------------------------------------------------------------
    async def take_request(
        self, account: str, default: Rate, margin: float, burst: int, count: int = 1, ahead: float = 0.0
    ) -> Grant:
        granted, wait, at, *slots = await self._script(
            "pace a request",
            "TAKE_REQUEST",
            [self._key(account, "rate")],
            default.limit,
            repr(float(default.window)),
            repr(float(margin)),
            burst,
            max(1, int(count)),
            repr(float(ahead)),
        )
        return Grant(int(granted) > 0, float(wait), float(at), tuple(float(_s(t)) for t in slots))

    @staticmethod
    def _rate(answer: Sequence[Any]) -> RateState:
        limit, window, blocked, tat, now = (_s(x) for x in answer)
        return RateState(
            int(limit) if limit else None,
            float(window) if window else None,
            float(blocked),
            float(tat),
            float(now),
        )

    async def learn_rate(
        self,
        account: str,
        limit: int | None,
        window: float | None,
        block_for: float | None,
        seen: WindowSeen | None = None,
    ) -> RateState:
        reset, remaining, left, granted = seen if seen is not None else ("", 0, 0.0, None)
        answer = await self._script(
            "record the rate",
            "LEARN_RATE",
            [self._key(account, "rate")],
            int(limit) if limit else "",
            repr(float(window)) if window else "",
            repr(float(block_for)) if block_for else "",
            repr(float(reset)) if seen is not None else "",
            int(remaining),
            repr(float(left)),
            repr(float(granted)) if granted is not None else "",
        )
        return self._rate(answer)

    async def rate_state(self, account: str) -> RateState:
        return self._rate(await self._script("read the rate", "RATE_STATE", [self._key(account, "rate")]))

    # --- slots ------------------------------------------------------------------------------------
    async def acquire_slot(
        self, account: str, holder: str, ttl: float, default_capacity: int, wait_ttl: float = WAIT_TTL
    ) -> SlotLease | float:
        lease_id = uuid.uuid4().hex
        ok, value, _ = await self._script(
            "take a job slot",
            "ACQUIRE_SLOT",
            self._fair_keys(account),
            lease_id,
            holder,
            repr(float(ttl)),
            default_capacity,
            repr(float(wait_ttl)),
        )
        if int(ok):
            return SlotLease(lease_id, holder, float(value))
        return float(value)

    async def renew_slots(self, account: str, ids: Sequence[str], ttl: float) -> list[str]:
        if not ids:
            return []
        lost = await self._script(
            "renew job slots", "RENEW_SLOTS", self._slot_keys(account)[:2], repr(float(ttl)), *ids
        )
        return [_s(x) for x in lost]

    async def release_slot(self, account: str, lease_id: str) -> None:
        slots, holders, _ = self._slot_keys(account)
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(slots, lease_id)
        pipe.hdel(holders, lease_id)
        await self._call("release a job slot", pipe.execute())

    async def set_capacity(self, account: str, capacity: int) -> None:
        await self._call(
            "set the job capacity",
            self._client.hset(self._key(account, "meta"), "capacity", str(max(1, int(capacity)))),
        )

    async def slot_state(self, account: str, default_capacity: int) -> SlotState:
        answer = [
            _s(x)
            for x in await self._script(
                "read the job slots", "SLOT_STATE", self._fair_keys(account), default_capacity
            )
        ]
        end = 3 + 3 * int(answer[2])
        leases = tuple((answer[i], answer[i + 1], float(answer[i + 2])) for i in range(3, end, 3))
        waiting = sorted(
            ((answer[i], float(answer[i + 1])) for i in range(end, len(answer), 2)), key=lambda w: w[1]
        )
        return SlotState(int(answer[0]), tuple(leases), float(answer[1]), tuple(waiting))

    # --- budgets ----------------------------------------------------------------------------------
    async def reserve(
        self, account: str, budget: str, credits: float, holder: str, ttl: float
    ) -> Reservation:
        check_budget(budget, credits)
        rid = uuid.uuid4().hex
        answer = [
            _s(x)
            for x in await self._script(
                "reserve credits",
                "RESERVE",
                self._budget_keys(account, budget),
                rid,
                repr(float(credits)),
                holder,
                repr(float(ttl)),
            )
        ]
        if answer[0] == "unknown":
            raise UnknownBudgetError(budget)
        if answer[0] == "exhausted":
            limit, spent, held, period, key = answer[1:]
            raise BudgetExhaustedError(
                budget,
                requested=float(credits),
                credits=float(limit),
                spent=float(spent),
                reserved=float(held),
                period=period,
                period_key=key,
            )
        return Reservation(rid, budget, float(credits), holder, float(answer[1]))

    async def renew_reservations(
        self, account: str, reservations: Sequence[Reservation], ttl: float
    ) -> list[str]:
        lost: list[str] = []
        by_budget: dict[str, list[str]] = {}
        for r in reservations:
            by_budget.setdefault(r.budget, []).append(r.id)
        for budget, ids in by_budget.items():
            answer = await self._script(
                "renew credit reservations",
                "RENEW_RESERVATIONS",
                self._budget_keys(account, budget)[1:],
                repr(float(ttl)),
                *ids,
            )
            lost.extend(_s(x) for x in answer)
        return lost

    async def settle(self, account: str, reservation: Reservation, actual: float) -> bool:
        live = await self._script(
            "record a charge",
            "SETTLE",
            self._budget_keys(account, reservation.budget),
            reservation.id,
            repr(float(actual)),
        )
        return bool(int(live))

    async def release_reservation(self, account: str, reservation: Reservation) -> None:
        _, expiry, data = self._budget_keys(account, reservation.budget)
        pipe = self._client.pipeline(transaction=True)
        pipe.zrem(expiry, reservation.id)
        pipe.hdel(data, reservation.id)
        await self._call("release credits", pipe.execute())

    async def set_budget(self, account: str, name: str, credits: float, period: str) -> BudgetState:
        check_budget(name, credits, period)
        await self._script(
            "set a budget",
            "SET_BUDGET",
            [self._key(account, "budget", name), self._key(account, "budgets")],
            name,
            repr(float(credits)),
            period,
        )
        state = await self._read_budget(account, name)
        assert state is not None
        return state

    async def delete_budget(self, account: str, name: str) -> bool:
        check_budget(name)
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(*self._budget_keys(account, name))
        pipe.srem(self._key(account, "budgets"), name)
        deleted, _ = await self._call("delete a budget", pipe.execute())
        return bool(deleted)

    async def _read_budget(self, account: str, name: str) -> BudgetState | None:
        answer = [
            _s(x)
            for x in await self._script("read the budgets", "READ_BUDGET", self._budget_keys(account, name))
        ]
        if not answer:
            return None
        credits, period, key, spent, held, count = answer
        return BudgetState(name, float(credits), period, key, float(spent), float(held), int(count))

    async def budgets(self, account: str) -> list[BudgetState]:
        names = await self._call("read the budgets", self._client.smembers(self._key(account, "budgets")))
        states = [await self._read_budget(account, _s(n)) for n in sorted(names)]
        return [s for s in states if s is not None]

    async def close(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisStore({self.description})"
