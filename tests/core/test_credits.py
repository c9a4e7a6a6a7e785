"""The usage report: a typed DataFrame whose credits add up to what the service's ledger charged."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.core.conftest import batch_spec
from vance_provider.core import VanceClient, totals, usage_frame, write_report
from vance_provider.core.credits import COLUMNS
from vance_provider.core.manifest import MANIFEST_NAME
from vance_provider.sim import SimulatorServer


def check_types(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(COLUMNS)
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert df["credits"].dtype == "float64" and df["balance"].dtype == "float64"
    for col in ("api", "tool", "kind", "source", "job_id"):
        assert isinstance(df[col].dtype, pd.StringDtype), col
    assert df["timestamp"].notna().all()
    assert df["timestamp"].is_monotonic_increasing


def test_web_report_matches_the_ledger_and_follows_pages(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    client = client_factory(sim, "web")
    for i in range(9):
        make_image(f"in/u{i}.jpg", 16, 12)
    for i in range(2):
        make_image(f"sharp/s{i}.jpg", 16, 12)
    assert client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"))).done == 9
    assert (
        client.run_batch(batch_spec(str(tmp_path / "sharp"), str(tmp_path / "out2"), "sharpen", {})).done == 2
    )
    df = client.usage_report()
    check_types(df)
    ledger_charges = [e for e in sim.state.ledger if e.kind == "charge"]
    downloads = df[df["kind"] == "download"]
    assert len(df) == 22 and len(downloads) == len(ledger_charges) == 11  # more than one page of 20
    assert (
        downloads["credits"].sum() == sum(e.amount for e in ledger_charges) == 13.0
    )  # the sharpener costs 2
    assert (df[df["kind"] == "job"]["credits"] == 0).all() and (df["kind"] == "job").sum() == 11
    assert set(df["api"]) == {"web"}
    assert set(downloads["tool"]) == {"enlarge3", "sharpen3"}
    assert sorted(downloads["balance"]) == sorted(e.balance for e in ledger_charges)
    assert totals(df)["total"] == 13.0 and totals(df)["per_tool"] == {"enlarge3": 9.0, "sharpen3": 4.0}
    # every page of points/record is read, whatever the page size
    before = sum(1 for r in sim.state.requests if r.path == "/web_api/v1/points/record")
    paged = client.run(client.aio.backend.usage(limit=5))
    pages = sum(1 for r in sim.state.requests if r.path == "/web_api/v1/points/record") - before
    assert pages == math.ceil(22 / 5)
    assert len(paged) == 22
    assert sorted((r.kind, r.credits, r.balance) for r in paged) == sorted(
        zip(df["kind"], df["credits"], df["balance"], strict=True)
    )


def test_open_report_from_manifests_matches_the_ledger(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    runner = client_factory(sim, "open")
    for i in range(3):
        make_image(f"in/u{i}.jpg", 16, 12)
    first = runner.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "x2")))
    second = runner.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "x8"), config={"scale": 8}))
    assert first.done == second.done == 3
    manifests = [str(tmp_path / "x2" / MANIFEST_NAME), str(tmp_path / "x8" / MANIFEST_NAME)]
    confirms = [e for e in sim.state.ledger if e.kind == "confirm"]
    assert sum(e.amount for e in confirms) == 9.0  # an 8x upscale costs 2

    fresh = client_factory(sim, "open")  # a new process: the manifests are the memory
    df = fresh.usage_report(manifests)
    check_types(df)
    assert len(df) == 6 and df["credits"].sum() == sum(e.amount for e in confirms)
    assert sorted(df["job_id"]) == sorted(e.job_id for e in confirms)
    assert set(df["kind"]) == {"charge"} and set(df["api"]) == {"open"}
    by_job = {e.job_id: e.amount for e in confirms}
    assert all(by_job[j] == c for j, c in zip(df["job_id"], df["credits"], strict=True))
    assert set(df["source"]) == {i.source for i in first.items}

    # the client that ran them knows the charges too; with the manifests they are not counted twice
    seen = runner.usage_report(manifests)
    assert len(seen) == 6 and seen["credits"].sum() == 9.0
    assert runner.usage_report()["credits"].sum() == 9.0


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_report_round_trips(
    api: str,
    sim: SimulatorServer,
    client: VanceClient,
    make_image: Callable[..., Path],
    tmp_path: Path,
    suffix: str,
) -> None:
    for i in range(2):
        make_image(f"in/r{i}.jpg", 16, 12)
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out")))
    df = client.usage_report([result.manifest] if api == "open" else [])
    assert len(df) == (2 if api == "open" else 4)
    url = str(tmp_path / "reports" / f"usage{suffix}")
    assert write_report(df, url) == url
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]
    if suffix == ".parquet":
        back = pd.read_parquet(url)
        pd.testing.assert_frame_equal(back, df, check_dtype=False)
        assert str(back["timestamp"].dtype).endswith("UTC]")
    else:
        back = pd.read_csv(url)
        assert list(back.columns) == list(COLUMNS)
        assert back["credits"].sum() == df["credits"].sum()
        assert list(pd.to_datetime(back["timestamp"], utc=True)) == list(df["timestamp"])
        assert list(back["kind"]) == list(df["kind"])


def test_write_report_needs_a_known_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        write_report(usage_frame([]), str(tmp_path / "usage.xlsx"))
    assert not list(tmp_path.iterdir())


def test_empty_report_is_typed() -> None:
    df = usage_frame([])
    assert df.empty and list(df.columns) == list(COLUMNS)
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]" and df["credits"].dtype == "float64"
    assert totals(df) == {"total": 0.0, "per_tool": {}, "per_day": {}}
