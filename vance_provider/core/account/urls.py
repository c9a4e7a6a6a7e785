"""Choose the account store from a URL: ``local`` (the default), ``sqlite:///path``,
``redis://host:port/db`` (also ``rediss://``, ``unix://``), ``postgresql://user:password@host/db``
(also ``postgres://``, ``postgresql+psycopg2://``), or ``none`` (this process only)."""

from __future__ import annotations

import os
import re

from ..api.errors import ConfigurationError
from ..secrets import redact_url
from .memory import MemoryStore
from .sqlite import SqliteStore, default_path
from .store import AccountStore

ENV_VAR = "VANCE_ACCOUNT_STORE"
DEFAULT_STORE = "local"


def store_url(url: str | None = None) -> str:
    """The store URL in force: ``url``, else ``$VANCE_ACCOUNT_STORE``, else ``local``."""
    return (url or os.environ.get(ENV_VAR) or DEFAULT_STORE).strip()


def open_store(url: str | None = None) -> AccountStore:
    """The store named by ``url`` (see :func:`store_url`)."""
    chosen = store_url(url)
    lowered = chosen.lower()
    if lowered == "local":
        return SqliteStore(default_path())
    if lowered in ("none", "memory", "memory://"):
        return MemoryStore()
    if lowered.startswith("sqlite://"):
        path = chosen[len("sqlite://") :]
        if not path or path == "/":
            raise ConfigurationError(
                f"no file in the account store URL {chosen!r}", hint="e.g. sqlite:///var/lib/vance/account.db"
            )
        return SqliteStore(path)
    if lowered.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore

        return RedisStore(chosen)
    if re.match(r"postgres(ql)?(\+\w+)?://", lowered):
        from .postgres import PostgresStore

        return PostgresStore(chosen)
    raise ConfigurationError(
        f"unknown account store {redact_url(chosen)!r}",
        hint=(
            f"{ENV_VAR} (or store_url) is one of: local, sqlite:///path, redis://host:6379/0, "
            "postgresql://user:password@host/db, none"
        ),
    )
