"""Stores that keep each account's whole state as one row of a SQL table (SQLite, PostgreSQL):
one connection per process, used by one thread at a time, and a forked child opens its own.
One row per account, the state as JSON: every operation reads and writes it whole (as
:class:`~.memory.MemoryStore` does in a dict), so the rules live once, in :mod:`.state`."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from .errors import AccountStoreUnavailableError
from .state import AccountState
from .whole import WholeStateStore

T = TypeVar("T")


class RowStore(WholeStateStore):
    """Implements :meth:`_apply` as one transaction on the account's row; subclasses say how to
    connect, how to run a transaction, and how to read (with the time) and write the row."""

    #: The driver's errors that mean the store cannot be used (:class:`AccountStoreUnavailableError`).
    errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, description: str) -> None:
        self.description = description
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._conn: Any = None
        self._pid = os.getpid()

    # --- what a subclass says ----------------------------------------------------------------------
    def _open(self) -> Any:
        """A new connection, its table made if missing."""
        raise NotImplementedError

    def _transaction(self, conn: Any) -> AbstractContextManager[object]:
        """Commits on leaving, rolls back on an error."""
        raise NotImplementedError

    def _load(self, conn: Any, account: str) -> tuple[str | None, float]:
        """In the transaction: lock the account's row, return its state (None: no state yet) and
        the store's time."""
        raise NotImplementedError

    def _save(self, conn: Any, account: str, state: str) -> None:
        raise NotImplementedError

    def _retry(self, exc: BaseException) -> bool:
        """Whether ``exc``, raised by a connection used before and before anything was written,
        says the connection was lost (a server restart) and a fresh one should try once more."""
        return False

    # --- the transaction ---------------------------------------------------------------------------
    def _connection(self) -> tuple[Any, bool]:
        # A forked child (Airflow's executors fork) opens its own connection and lets go of the
        # parent's without closing it (psycopg2 leaves one of another process open when collected).
        if self._pid != os.getpid():
            self._conn, self._pid = None, os.getpid()
        if self._conn is not None:
            return self._conn, False
        self._conn = self._open()
        return self._conn, True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except self.errors:
                pass

    def _run(self, account: str, fn: Callable[[AccountState, float], T]) -> T:
        with self._lock:
            while True:
                conn, fresh = self._connection()
                loaded = False
                try:
                    with self._transaction(conn):
                        before, now = self._load(conn, account)
                        loaded = True
                        state = AccountState.from_json(before) if before else AccountState()
                        result = fn(state, now)
                        after = state.to_json()
                        if after != before:
                            self._save(conn, account, after)
                    return result
                except self.errors as exc:
                    self._drop()
                    if fresh or loaded or not self._retry(exc):
                        raise

    async def _apply(self, account: str, operation: str, fn: Callable[[AccountState, float], T]) -> T:
        try:
            return await asyncio.to_thread(self._run, account, fn)
        except self.errors as exc:
            raise AccountStoreUnavailableError(self.description, operation, self._reason(exc)) from None

    def _reason(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    async def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._drop()
