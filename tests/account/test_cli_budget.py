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


def test_enhance_draws_on_a_named_budget_and_the_report_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import fast_config, image_bytes
    from vance_provider.sim import DEMO_OPEN_KEY, SimulatorServer

    sim = SimulatorServer(fast_config()).start()
    try:
        monkeypatch.setenv("VANCE_API_TOKEN", DEMO_OPEN_KEY)
        monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
        monkeypatch.setenv("VANCE_ACCOUNT_STORE", f"sqlite://{tmp_path}/account.sqlite3")
        src, dst = tmp_path / "in", tmp_path / "out"
        src.mkdir()
        for i in range(3):
            (src / f"p{i}.jpg").write_bytes(image_bytes(16 + i, 12))
        assert _vance(["budget", "set", "photos", "10"], capsys)[0] == 0
        code, _, err = _vance(
            [
                "--api",
                "open",
                "enhance",
                str(src),
                str(dst),
                "--tool",
                "upscale",
                "--scale",
                "2",
                "--account-budget",
                "photos",
            ],
            capsys,
        )
        assert code == 0, err
        code, out, _ = _vance(
            ["--api", "open", "report", "--manifest", str(dst), "--out", str(tmp_path / "usage.csv")], capsys
        )
        assert (
            code == 0
            and "budget photos: 10 credits in total: 3 spent, 0 reserved by jobs in flight, 7 left" in out
        )
        code, _, err = _vance(
            [
                "--api",
                "open",
                "enhance",
                str(src),
                str(tmp_path / "again"),
                "--tool",
                "upscale",
                "--scale",
                "2",
                "--account-budget",
                "nope",
            ],
            capsys,
        )
        assert code != 0 and "no budget named 'nope'" in err
    finally:
        sim.stop()
