"""Account-wide shared state for every worker that uses one VanceAI account: the request rate,
the jobs in flight and named credit budgets, kept in a store chosen by a URL (``local`` SQLite
by default, ``redis://...`` or ``postgresql://...`` across machines, ``none``). See
``docs/account.md``.

>>> account = open_account("https://api.vanceai.com", token, budget="photos")  # doctest: +SKIP
>>> await account.acquire_request()                                            # doctest: +SKIP
"""

from .account import (
    DEFAULT_CAPACITY,
    DEFAULT_RATE,
    RESERVATION_TTL,
    SLOT_TTL,
    Account,
    open_account,
)
from .admin import delete_budget, get_budgets, set_budget
from .errors import AccountStoreUnavailableError, BudgetExhaustedError, UnknownBudgetError
from .identity import account_id
from .memory import MemoryStore
from .models import PERIODS, WAIT_TTL, BudgetState, Rate, RateState, Reservation, SlotLease, SlotState
from .sqlite import SqliteStore, default_path
from .store import AccountStore
from .urls import ENV_VAR, open_store, store_url

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_RATE",
    "ENV_VAR",
    "PERIODS",
    "RESERVATION_TTL",
    "SLOT_TTL",
    "WAIT_TTL",
    "Account",
    "AccountStore",
    "AccountStoreUnavailableError",
    "BudgetExhaustedError",
    "BudgetState",
    "MemoryStore",
    "Rate",
    "RateState",
    "Reservation",
    "SlotLease",
    "SlotState",
    "SqliteStore",
    "UnknownBudgetError",
    "account_id",
    "default_path",
    "delete_budget",
    "get_budgets",
    "open_account",
    "open_store",
    "set_budget",
    "store_url",
]
