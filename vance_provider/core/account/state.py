"""One account's shared state as plain data, and the operations on it, for the stores that keep
it whole in one place (:class:`~.memory.MemoryStore` in a dict, :class:`~.sqlite.SqliteStore` and
:class:`~.postgres.PostgresStore` in one row read and written inside one transaction that holds
the row's lock). Redis does the same in Lua.

Each operation takes ``now`` (the store's clock) and mutates the state in place.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import BudgetExhaustedError, UnknownBudgetError
from .models import (
    BudgetState,
    Grant,
    Rate,
    RateState,
    Reservation,
    SlotLease,
    SlotState,
    WindowSeen,
    period_key,
    window_guard,
)

EPSILON = 1e-9  # credits: float sums may differ from the exact sum by this much


@dataclass
class AccountState:
    limit: int | None = None
    window: float | None = None
    tat: float = 0.0  # GCRA's theoretical arrival time: the next request at the learned pace
    blocked_until: float = 0.0
    # The service's current rate window, as its answers told it (see ``window_seen``): its
    # ``X-RateLimit-Reset`` (the window's name), when it ends on the store's clock, the requests
    # it has left to grant, and the requests granted since shortly before it ends.
    win_id: float | None = None
    win_end: float = 0.0
    win_left: int = 0
    win_since: int = 0
    capacity: int | None = None
    slots: dict[str, list[Any]] = field(default_factory=dict)  # id -> [holder, expires_at]
    waiting: dict[str, list[float]] = field(default_factory=dict)  # holder -> [since, expires_at]
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> credits, period, key, spent
    reservations: dict[str, list[Any]] = field(default_factory=dict)  # id -> [budget, credits, holder, exp]

    def to_json(self) -> str:
        data = asdict(self)
        if not data["waiting"]:  # left out when empty: a version without it can read the state
            del data["waiting"]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AccountState:
        data = json.loads(text)
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})  # a newer version's fields: kept out


# --- rate --------------------------------------------------------------------------------------------
def take_request(
    s: AccountState,
    now: float,
    default: Rate,
    margin: float,
    burst: int,
    count: int = 1,
    ahead: float = 0.0,
) -> Grant:
    """``count`` request slots at the account's pace (fewer if they cannot all lie within
    ``ahead`` seconds), once the last of them is no more than ``ahead`` seconds from ``now``: a
    slot is the time its request may go (GCRA: the slots of every caller together keep the pace).
    Not yet: how long until then.

    Inside a window the service has counted for the account (``window_seen``), what it has left
    goes at once, unpaced; once spent, nothing goes until a guard after its end (``models.WINDOW_GUARD``)."""
    rate = (
        Rate(s.limit, s.window or default.window) if s.limit else default
    )  # a limit alone: per default window
    interval = rate.interval(margin)
    wanted = max(1, min(count, 1 + int(ahead / interval)))
    guard = window_guard(s.window)
    end = s.win_end + guard  # the window counted may not have ended at the service before
    if now < end and s.win_left <= 0:  # spent: nothing before then
        return _grant_paced(s, now, interval, burst, wanted, ahead, guard, floor=end)
    if now < s.win_end:  # what the service has left in its window goes at once
        slots = (max(now, s.blocked_until),) * min(count, s.win_left)
        _count(s, slots, guard)
        return Grant(True, slots[0] - now, now, slots)
    if now < end:
        wanted = min(wanted, s.win_left)
    return _grant_paced(s, now, interval, burst, wanted, ahead, guard)


def _grant_paced(
    s: AccountState,
    now: float,
    interval: float,
    burst: int,
    wanted: int,
    ahead: float,
    guard: float,
    floor: float = 0.0,
) -> Grant:
    slots, tat = [], s.tat
    for _ in range(wanted):
        at = max(tat - (burst - 1) * interval, s.blocked_until, now, floor)
        slots.append(at)
        tat = max(tat, at) + interval
    if slots[-1] - now > ahead:
        return Grant(False, slots[-1] - now - ahead, now)
    s.tat = tat
    _count(s, slots, guard)
    return Grant(True, slots[0] - now, now, tuple(slots))


def _count(s: AccountState, slots: Sequence[float], guard: float) -> None:
    """Charge granted slots to the window they may reach the service in: the counted one until
    ``guard`` after its end, the next one from ``guard`` before it."""
    s.win_left -= sum(1 for at in slots if at < s.win_end + guard)
    s.win_since += sum(1 for at in slots if at >= s.win_end - guard)


def window_seen(
    s: AccountState, now: float, reset: float, remaining: int, left: float, granted: float | None
) -> None:
    """An answer said its window (``X-RateLimit-Reset``: ``reset``) has ``remaining`` requests
    left and ends in ``left`` seconds (its request granted at ``granted``). A newer window than
    the one counted becomes the counted one, with what it has left less every other request
    granted since shortly before the last one ended (they may not have reached the service yet);
    the same window can only have less left."""
    if s.win_id is None or reset > s.win_id + 1e-3:
        guard, since = window_guard(s.window), s.win_since
        if granted is not None and granted >= s.win_end - guard:
            since -= 1  # the answered request: counted by the service already
        # Granted before the last window's end as told, yet in the next one: the clocks disagree
        # (or the request was slow), and what else went since is not counted.
        skewed = s.win_id is not None and granted is not None and granted < s.win_end - guard
        s.win_left = max(0, min(remaining, s.limit or 0) - max(0, since))
        s.win_id, s.win_end, s.win_since = reset, now + max(0.0, left), 0
        if skewed:  # paced through this window, every grant counted for the next
            s.win_left, s.win_end = 0, now - guard
    elif reset > s.win_id - 1e-3:
        s.win_left = min(s.win_left, remaining)


def learn_rate(
    s: AccountState,
    now: float,
    limit: int | None,
    window: float | None,
    block_for: float | None,
    seen: WindowSeen | None = None,
) -> RateState:
    if limit:
        s.limit = int(limit)
        # A faster rate than the one paced by: the next slot need not wait for the old pace.
        window_now = s.window or window
        if window_now:
            s.tat = min(s.tat, max(now, s.blocked_until) + float(window or window_now) / s.limit)
    if window:
        s.window = float(window)
    if block_for is not None and block_for > 0:
        until = now + block_for
        if until > s.blocked_until:
            s.blocked_until = until
        s.tat = max(s.tat, s.blocked_until)  # after the block: one request first, then paced
        s.win_left = 0  # refused: the count was wrong; paced until a newer window is told
    if seen is not None:
        window_seen(s, now, *seen)
    return rate_state(s, now)


def rate_state(s: AccountState, now: float) -> RateState:
    return RateState(s.limit, s.window, s.blocked_until, s.tat, now)


# --- slots -------------------------------------------------------------------------------------------
def _purge_slots(s: AccountState, now: float) -> None:
    for lease_id in [k for k, (_, exp) in s.slots.items() if exp <= now]:
        del s.slots[lease_id]
    for holder in [h for h, (_, exp) in s.waiting.items() if exp <= now]:
        del s.waiting[holder]


def ahead_of(held: Counter[str], waiting: dict[str, float], holder: str, since: float) -> int:
    """How many free slots would go to other waiting holders before ``holder`` (waiting since
    ``since``): free slots go one at a time to the waiting holder with the fewest slots, the
    longest waiting among equals, and a holder given one goes behind those it was equal to. So
    each waiting holder with fewer slots comes first until it has as many, and each with as many
    that has waited longer comes first once. ``held``: slots per holder; ``waiting``: holder ->
    since when."""
    mine = held[holder]
    ahead = 0
    for other, other_since in waiting.items():
        if other == holder:
            continue
        theirs = held[other]
        ahead += max(0, mine - theirs) + (1 if theirs == mine and other_since < since else 0)
    return ahead


def acquire_slot(
    s: AccountState, now: float, holder: str, ttl: float, default_capacity: int, wait_ttl: float
) -> SlotLease | float:
    _purge_slots(s, now)
    capacity = s.capacity if s.capacity is not None else default_capacity
    free = capacity - len(s.slots)
    since = s.waiting[holder][0] if holder in s.waiting else now
    ahead = ahead_of(
        Counter(h for h, _ in s.slots.values()), {h: w[0] for h, w in s.waiting.items()}, holder, since
    )
    if ahead < free:
        s.waiting.pop(holder, None)
        lease_id = uuid.uuid4().hex
        s.slots[lease_id] = [holder, now + ttl]
        return SlotLease(lease_id, holder, now + ttl)
    s.waiting[holder] = [since, now + wait_ttl]  # waiting: the next free slots are shared fairly
    if ahead == 0:  # the next slot freed is this holder's: it should look again soon
        return 0.0
    return max(0.0, min((exp for _, exp in s.slots.values()), default=now + ttl) - now)


def renew_slots(s: AccountState, now: float, ids: Sequence[str], ttl: float) -> list[str]:
    _purge_slots(s, now)
    lost = []
    for lease_id in ids:
        if lease_id in s.slots:
            s.slots[lease_id][1] = now + ttl
        else:
            lost.append(lease_id)
    return lost


def release_slot(s: AccountState, lease_id: str) -> None:
    s.slots.pop(lease_id, None)


def slot_state(s: AccountState, now: float, default_capacity: int) -> SlotState:
    _purge_slots(s, now)
    capacity = s.capacity if s.capacity is not None else default_capacity
    leases = tuple((k, str(h), float(exp)) for k, (h, exp) in sorted(s.slots.items(), key=lambda i: i[1][1]))
    waiting = tuple((h, float(w[0])) for h, w in sorted(s.waiting.items(), key=lambda i: i[1][0]))
    return SlotState(capacity, leases, now, waiting)


# --- budgets -----------------------------------------------------------------------------------------
def _purge_reservations(s: AccountState, now: float) -> None:
    for rid in [k for k, r in s.reservations.items() if r[3] <= now]:
        del s.reservations[rid]


def _roll(b: dict[str, Any], now: float) -> None:
    key = period_key(b["period"], now)
    if key != b["key"]:
        b["key"], b["spent"] = key, 0.0


def _reserved(s: AccountState, name: str) -> tuple[float, int]:
    held = [r[1] for r in s.reservations.values() if r[0] == name]
    return float(sum(held)), len(held)


def _view(s: AccountState, name: str) -> BudgetState:
    b = s.budgets[name]
    reserved, count = _reserved(s, name)
    return BudgetState(name, b["credits"], b["period"], b["key"], b["spent"], reserved, count)


def reserve(s: AccountState, now: float, budget: str, credits: float, holder: str, ttl: float) -> Reservation:
    b = s.budgets.get(budget)
    if b is None:
        raise UnknownBudgetError(budget)
    _purge_reservations(s, now)
    _roll(b, now)
    reserved, _ = _reserved(s, budget)
    if b["spent"] + reserved + credits > b["credits"] + EPSILON:
        raise BudgetExhaustedError(
            budget,
            requested=credits,
            credits=b["credits"],
            spent=b["spent"],
            reserved=reserved,
            period=b["period"],
            period_key=b["key"],
        )
    rid = uuid.uuid4().hex
    s.reservations[rid] = [budget, float(credits), holder, now + ttl]
    return Reservation(rid, budget, float(credits), holder, now + ttl)


def renew_reservations(
    s: AccountState, now: float, reservations: Sequence[Reservation], ttl: float
) -> list[str]:
    _purge_reservations(s, now)
    lost = []
    for r in reservations:
        if r.id in s.reservations:
            s.reservations[r.id][3] = now + ttl
        else:
            lost.append(r.id)
    return lost


def settle(s: AccountState, now: float, reservation: Reservation, actual: float) -> bool:
    _purge_reservations(s, now)
    live = s.reservations.pop(reservation.id, None) is not None
    b = s.budgets.get(reservation.budget)
    if b is not None:
        _roll(b, now)
        b["spent"] = b["spent"] + float(actual)
    return live


def release_reservation(s: AccountState, reservation: Reservation) -> None:
    s.reservations.pop(reservation.id, None)


def set_budget(s: AccountState, now: float, name: str, credits: float, period: str) -> BudgetState:
    b = s.budgets.get(name)
    if b is None or b["period"] != period:  # a new budget, or a new kind of period: start afresh
        s.budgets[name] = {
            "credits": float(credits),
            "period": period,
            "key": period_key(period, now),
            "spent": 0.0,
        }
    else:
        b["credits"] = float(credits)
        _roll(b, now)
    _purge_reservations(s, now)
    return _view(s, name)


def delete_budget(s: AccountState, name: str) -> bool:
    return s.budgets.pop(name, None) is not None


def budgets(s: AccountState, now: float) -> list[BudgetState]:
    _purge_reservations(s, now)
    for b in s.budgets.values():
        _roll(b, now)
    return [_view(s, name) for name in sorted(s.budgets)]
