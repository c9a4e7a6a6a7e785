"""The embedded default store: one SQLite file that coordinates every process on one machine.

Each operation is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, taken before reading)
on the account's row, so two processes never interleave. Time is this machine's clock, which
all its processes share.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .rows import RowStore

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


class SqliteStore(RowStore):
    """Account state in a SQLite file shared by every process on this machine."""

    errors = (sqlite3.Error, OSError)

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path).expanduser()
        super().__init__(f"sqlite://{self.path}")
        self._clock = clock

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fresh = not self.path.exists()
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            if fresh:
                with contextlib.suppress(OSError):
                    os.chmod(self.path, 0o600)
            _use_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _load(self, conn: sqlite3.Connection, account: str) -> tuple[str | None, float]:
        row = conn.execute("SELECT state FROM account_state WHERE account = ?", (account,)).fetchone()
        return (row[0] if row else None), self._clock()

    def _save(self, conn: sqlite3.Connection, account: str, state: str) -> None:
        conn.execute(
            "INSERT INTO account_state (account, state) VALUES (?, ?) "
            "ON CONFLICT (account) DO UPDATE SET state = excluded.state",
            (account, state),
        )


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so). Several processes opening a new file at once race
    to switch it, and SQLite answers the losers "database is locked" at once, without waiting
    for the busy timeout: they ask again until it is switched."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
