"""The store for many machines that already share a PostgreSQL server (Airflow's or Dagster's
metadata database, say): one row per account in the table ``vance_account_state``.

Each operation is one transaction that locks the account's row (``SELECT ... FOR UPDATE``, after
inserting it if missing, so there is always a row to lock) and writes it back if it changed.
Time is the database server's clock (``clock_timestamp()``, read once the row is locked), so
every machine judges leases by one clock, as Redis's ``TIME`` does for the Redis store.

A row held by a transaction that does not end (a worker frozen mid-operation, a psql session left
open) is waited for at most ``lock_timeout`` seconds, then the operation fails with
:class:`~.errors.AccountStoreUnavailableError`, as for a server that is down. The store's own
transactions are ended by the server if their worker goes quiet in one for ``idle_timeout``
seconds, shorter, so a frozen worker's lock is gone before the others give up.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import unquote

from ..api.errors import ConfigurationError
from ..secrets import Secret, redact_url
from .rows import RowStore

CONNECT_TIMEOUT = 5  # seconds to open a connection to the server (libpq counts whole seconds)
# A server or network gone mid-query: the connection is given up after this many milliseconds of
# data unacknowledged (or keepalives unanswered) rather than when the system's TCP gives up.
TCP_USER_TIMEOUT_MS = 10_000
# Seconds an operation waits for the account's row (or the table-making lock) held by another
# transaction. Operations hold it for a few round trips, so this is only reached when the holder
# is stuck.
LOCK_TIMEOUT = 10.0
# Seconds one of the store's transactions may sit idle (its worker frozen mid-operation) before the
# server ends it and its lock: shorter than LOCK_TIMEOUT, so waiters get the row instead of failing.
IDLE_TIMEOUT = 5.0
TABLE = "vance_account_state"

_LOCK_ID = 0x76616E6365  # "vance": the advisory lock held while one process makes the table
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    account TEXT PRIMARY KEY,   -- the account's id: a hash, never the key
    state   TEXT                -- JSON: rate, slots, budgets, reservations (NULL: none yet)
)
"""
# SET LOCAL, for this transaction only (a pooler in transaction mode keeps no session settings).
_LIMITS = """
SET LOCAL lock_timeout = %(lock_timeout)s;
SET LOCAL idle_in_transaction_session_timeout = %(idle_timeout)s;
"""
# One round trip: the row made if missing, locked, then read with the time once the lock is held.
_LOAD = f"""{_LIMITS}
INSERT INTO {TABLE} (account) VALUES (%(account)s) ON CONFLICT (account) DO NOTHING;
SELECT 1 FROM {TABLE} WHERE account = %(account)s FOR UPDATE;
SELECT state, extract(epoch FROM clock_timestamp())::float8 FROM {TABLE} WHERE account = %(account)s
"""
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword=)([^&#\s]*)")


def describe(url: str) -> str:
    """``url`` without its password, as ``user:password@`` or as a ``password=`` parameter."""
    return _PASSWORD_PARAM.sub(r"\1***", redact_url(url))


def _passwords(url: str) -> set[str]:
    """The passwords in ``url``, as written and percent-decoded."""
    found = re.findall(r"://[^/@:\s]*:([^/@\s]*)@", url) + [m[2] for m in _PASSWORD_PARAM.finditer(url)]
    return {form for p in found for form in (p, unquote(p)) if form}


_OWN_PARAMS = ("lock_timeout", "idle_timeout")


def _own_params(url: str) -> tuple[str, dict[str, float]]:
    """The URL without this store's own parameters (libpq knows neither), and their values:
    ``lock_timeout`` and ``idle_timeout``, in seconds."""
    base, _, query = url.partition("?")
    kept, told = [], {}
    for part in query.split("&") if query else []:
        name, _, value = part.partition("=")
        if name.lower() not in _OWN_PARAMS:
            kept.append(part)
            continue
        try:
            seconds = float(unquote(value))
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds <= 86400:
            default = LOCK_TIMEOUT if name.lower() == "lock_timeout" else IDLE_TIMEOUT
            raise ConfigurationError(
                f"bad {name.lower()} in the PostgreSQL account store URL: {unquote(value)!r}",
                hint=f"seconds, more than 0 (the default: ?{name.lower()}={default:g})",
            )
        told[name.lower()] = seconds
    return (f"{base}?{'&'.join(kept)}" if kept else base), told


class PostgresStore(RowStore):
    """Account state in a PostgreSQL database, shared by every worker that reaches the server.

    ``url``: libpq's, ``postgresql://user:password@host:5432/dbname`` (``postgres://`` too,
    with libpq's parameters: ``?sslmode=require``; SQLAlchemy's ``postgresql+psycopg2://`` is
    taken as ``postgresql://``). ``lock_timeout``: seconds an operation waits for the account's
    row while another transaction holds it (default 10); ``idle_timeout``: seconds one of this
    store's transactions may sit idle before the server ends it (default 5; see the module's
    doc). Both can be given in the URL too (``?lock_timeout=30&idle_timeout=10``); the
    arguments, when given, win. ``clock``: only for
    tests, a function giving the time to use instead of the server's.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: int = CONNECT_TIMEOUT,
        lock_timeout: float | None = None,
        idle_timeout: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        try:
            import psycopg2
        except ImportError:
            raise ConfigurationError(
                "the PostgreSQL account store needs the psycopg2 driver",
                hint="pip install 'vance-pipelines[postgres]'",
            ) from None
        url = re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url, flags=re.I)  # SQLAlchemy's form
        url, told = _own_params(url)
        lock_timeout = told.get("lock_timeout", LOCK_TIMEOUT) if lock_timeout is None else lock_timeout
        idle_timeout = told.get("idle_timeout", IDLE_TIMEOUT) if idle_timeout is None else idle_timeout
        super().__init__(describe(url))
        self.errors = (psycopg2.Error, OSError)
        # Nor in vars(), nor in a traceback's locals; only its passwords are redacted from logs: the
        # whole URL would also redact the next store's description of it (``user:***@host/db``).
        self._url = Secret(url, _passwords(url))
        self._connect_timeout = connect_timeout
        self._lock_timeout = lock_timeout
        # In whole milliseconds, at least 1 (0 would mean no limit).
        self._limits = {
            "lock_timeout": max(1, round(lock_timeout * 1000)),
            "idle_timeout": max(1, round(idle_timeout * 1000)),
        }
        self._clock = clock

    def _open(self) -> Any:
        import psycopg2

        conn = psycopg2.connect(
            self._url.reveal(),
            connect_timeout=self._connect_timeout,
            application_name="vance-account",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=TCP_USER_TIMEOUT_MS,
        )
        try:
            # Each statement sees what was committed before it (whatever the server's default):
            # the state read once the row is locked is the last one written.
            conn.set_session(isolation_level="READ COMMITTED")
            # The table made only if missing (a user who may not create tables can use one made
            # for them), by one process at a time.
            with conn, conn.cursor() as cur:
                cur.execute(_LIMITS, self._limits)
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                cur.execute("SELECT to_regclass(%s)", (TABLE,))
                if cur.fetchone()[0] is None:
                    cur.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _transaction(self, conn: Any) -> AbstractContextManager[object]:
        return conn  # psycopg2's connection: commits on leaving, rolls back on an error

    def _load(self, conn: Any, account: str) -> tuple[str | None, float]:
        with conn.cursor() as cur:
            cur.execute(_LOAD, {"account": account, **self._limits})
            state, now = cur.fetchone()
        return state, (now if self._clock is None else self._clock())

    def _save(self, conn: Any, account: str, state: str) -> None:
        with conn.cursor() as cur:
            cur.execute(f"UPDATE {TABLE} SET state = %s WHERE account = %s", (state, account))

    def _retry(self, exc: BaseException) -> bool:
        import psycopg2
        from psycopg2.errors import LockNotAvailable

        # A lock wait that timed out: the server is there, a new connection would wait as long again.
        if isinstance(exc, LockNotAvailable):
            return False
        return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))

    def _reason(self, exc: BaseException) -> str:
        from psycopg2.errors import LockNotAvailable

        if isinstance(exc, LockNotAvailable):
            return (
                f"waited over {self._lock_timeout:g} s (lock_timeout) for a lock that another "
                "transaction holds: a stuck worker's, or a session's left open in a transaction "
                "(see pg_stat_activity)"
            )
        text = describe(" ".join(super()._reason(exc).split()))
        for password in sorted(_passwords(self._url.reveal()), key=len, reverse=True):
            text = text.replace(password, "***")
        return text
