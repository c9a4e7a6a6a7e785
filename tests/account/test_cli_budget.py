"""``vance budget set`` / ``vance budget show``: account-wide budgets from a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest

from vance_provider import cli
from vance_provider.core.account import get_budgets


def _vance(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        cli.main(args)
    out = capsys.readouterr()
    return int(done.value.code or 0), " ".join(out.out.split()), " ".join(out.err.split())


def test_budget_set_and_show(
    tmp_path: Path, api_key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite://{tmp_path}/account.sqlite3"
    monkeypatch.setenv("VANCE_API_TOKEN", api_key)
    monkeypatch.setenv("VANCE_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("VANCE_ACCOUNT_STORE", store)
    assert _vance(["budget", "show"], capsys)[1].startswith("no budgets")
    code, out, _ = _vance(["budget", "set", "photos", "500", "--period", "day"], capsys)
    assert code == 0 and out.startswith("photos: 500 credits a day (") and out.endswith("500 left")
    code, out, _ = _vance(["budget", "set", "all", "1000"], capsys)
    assert code == 0 and "1000 credits in total" in out
    code, out, _ = _vance(["budget", "show"], capsys)
    assert code == 0 and out.index("all: 1000") < out.index("photos: 500")
    # The same account as the library's: the key at the client's base URL (the Open API's here).
    budgets = get_budgets(api_base_url="http://127.0.0.1:9/api/v1", api_key=api_key, store_url=store)
    assert [(b.name, b.credits) for b in budgets] == [("all", 1000.0), ("photos", 500.0)]
    code, _, err = _vance(["budget", "set", "bad name", "3"], capsys)
    assert code == 2 and "bad budget name" in err
    code, _, err = _vance(["budget", "show", "--store", "redis://127.0.0.1:9/0"], capsys)
    assert code == 5 and "Redis server is running" in err and api_key not in err
