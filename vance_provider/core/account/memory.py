"""A store for one process: the ``none`` store, and the fallback while the real one is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .state import AccountState
from .whole import WholeStateStore

T = TypeVar("T")


class MemoryStore(WholeStateStore):
    """Account state in this process's memory: coordinates the tasks of one process only."""

    def __init__(self, *, clock: Callable[[], float] = time.time, description: str = "none") -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, AccountState] = {}
        self.description = description

    async def _apply(self, account: str, operation: str, fn: Callable[[AccountState, float], T]) -> T:
        with self._lock:
            state = self._states.setdefault(account, AccountState())
            return fn(state, self._clock())
