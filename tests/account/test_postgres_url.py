"""The PostgreSQL store's own URL parameters: its lock and idle timeouts, taken out of the URL
before libpq sees it (libpq would refuse them), checked before anything connects."""

from __future__ import annotations

import pytest

from vance_provider.core.account import open_store
from vance_provider.core.account.postgres import IDLE_TIMEOUT, LOCK_TIMEOUT, PostgresStore
from vance_provider.core.api.errors import ConfigurationError


def test_timeouts_come_from_the_url_and_leave_it() -> None:
    store = open_store("postgresql://u:pw@db.example/vance?sslmode=disable&lock_timeout=30&idle_timeout=2.5")
    assert isinstance(store, PostgresStore)
    assert store._url.reveal() == "postgresql://u:pw@db.example/vance?sslmode=disable"
    assert store._limits == {"lock_timeout": 30_000, "idle_timeout": 2_500}
    assert "timeout" not in store.description and "pw" not in store.description
    only = PostgresStore("postgres://u@db.example/vance?LOCK_TIMEOUT=1")
    assert only._url.reveal() == "postgres://u@db.example/vance"
    assert only._limits == {"lock_timeout": 1000, "idle_timeout": round(IDLE_TIMEOUT * 1000)}


def test_arguments_win_over_the_url_and_the_defaults_hold_without_either() -> None:
    store = PostgresStore("postgresql://db.example/vance?lock_timeout=30", lock_timeout=3)
    assert store._limits["lock_timeout"] == 3000
    plain = PostgresStore("postgresql://db.example/vance")
    assert plain._limits == {
        "lock_timeout": round(LOCK_TIMEOUT * 1000),
        "idle_timeout": round(IDLE_TIMEOUT * 1000),
    }


@pytest.mark.parametrize("value", ["", "soon", "0", "-5", "nan", "inf"])
def test_a_bad_timeout_is_refused_with_what_to_write(value: str) -> None:
    with pytest.raises(ConfigurationError, match="lock_timeout") as refused:
        open_store(f"postgresql://u:secret@db.example/vance?lock_timeout={value}")
    assert "seconds" in str(refused.value.hint) and "secret" not in str(refused.value)


async def test_a_url_with_its_timeouts_reaches_the_server(postgres_url: str, api_key: str) -> None:
    """libpq refuses a parameter it does not know: the store's own are gone before it connects."""
    joined = "&" if "?" in postgres_url else "?"
    store = open_store(f"{postgres_url}{joined}lock_timeout=2&idle_timeout=1")
    try:
        state = await store.set_budget(api_key, "team", 5.0, "total")
        assert state.credits == 5.0
    finally:
        await store.close()
