"""The embedded default store: one SQLite file that coordinates every process on one machine.

Each operation is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, taken before reading)
on the account's row, so two processes never interleave. Time is this machine's clock, which
all its processes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .errors import AccountStoreUnavailableError
from .state import AccountState
from .whole import WholeStateStore

T = TypeVar("T")

BUSY_TIMEOUT = 30.0  # seconds a transaction waits for another process's to end

_SCHEMA = """
CREATE TABLE IF NOT EXISTS account_state (
    account TEXT PRIMARY KEY,   -- the account's id: a hash, never the key
    state   TEXT NOT NULL       -- JSON: rate, slots, budgets, reservations
)
"""


def default_state_dir() -> Path:
    """``$VANCE_STATE_DIR``, else ``$XDG_STATE_HOME/vance``, else ``~/.local/state/vance``."""
    if explicit := os.environ.get("VANCE_STATE_DIR"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser() / "vance"


def default_path() -> Path:
    """Where the ``local`` store keeps its file: ``<state dir>/account.sqlite3``."""
    return default_state_dir() / "account.sqlite3"


class SqliteStore(WholeStateStore):
    """Account state in a SQLite file shared by every process on this machine."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser()
        self.description = f"sqlite://{self.path}"
        self._clock = clock
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()

    def _connect(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # a forked child (Airflow's executors fork): its own connection
            self._conn, self._pid = None, os.getpid()
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fresh = not self.path.exists()
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                if fresh:
                    with contextlib.suppress(OSError):
                        os.chmod(self.path, 0o600)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _run(self, account: str, fn: Callable[[AccountState, float], T]) -> T:
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT state FROM account_state WHERE account = ?", (account,)).fetchone()
                state = AccountState.from_json(row[0]) if row else AccountState()
                before = row[0] if row else None
                result = fn(state, self._clock())
                after = state.to_json()
                if after != before:
                    conn.execute(
                        "INSERT INTO account_state (account, state) VALUES (?, ?) "
                        "ON CONFLICT (account) DO UPDATE SET state = excluded.state",
                        (account, after),
                    )
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    async def _apply(self, account: str, operation: str, fn: Callable[[AccountState, float], T]) -> T:
        try:
            return await asyncio.to_thread(self._run, account, fn)
        except (sqlite3.Error, OSError) as exc:
            raise AccountStoreUnavailableError(self.description, operation, _reason(exc)) from None

    async def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
