"""The usage report: one row per charge, in time order, with the same typed columns for both APIs,
whose credits, balances and job ids are those of the simulator's ledger; and its summary."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.core.conftest import batch_spec
from vance_provider.core import UsageRecord, VanceClient, totals, usage_frame, write_report
from vance_provider.core.reports.credits import (
    COLUMNS,
    SUMMARY_COLUMNS,
    join_web_history,
    records_from_manifests,
    summary_markdown,
    summary_text,
    usage_summary,
)
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.sim import SimulatorServer


def check_types(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(COLUMNS)
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert df["credits"].dtype == "float64" and df["balance"].dtype == "float64"
    for col in ("api", "tool", "vendor_tool", "kind", "source", "output", "job_id", "batch", "run"):
        assert isinstance(df[col].dtype, pd.StringDtype), col
    assert df["timestamp"].notna().all()
    assert df["timestamp"].is_monotonic_increasing


def manifest_items(*manifests: str) -> dict[str, dict]:
    """job id -> (manifest url, item) of every charge recorded in the manifests."""
    found = {}
    for url in manifests:
        for item in json.loads(Path(url).read_text())["items"]:
            for charge in item["charges"]:
                found[charge["job_id"]] = {"batch": url, **item}
    return found


def test_web_report_is_the_ledger_completed_from_the_manifests(
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
    # eight at a time: downloads finish (and are recorded) in another order than they were charged
    first = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), max_concurrency=8))
    second = client.run_batch(batch_spec(str(tmp_path / "sharp"), str(tmp_path / "out2"), "sharpen", {}))
    assert first.done == 9 and second.done == 2
    ledger = [e for e in sim.state.ledger if e.kind == "charge"]
    assert len(ledger) == 11

    df = client.usage_report([first.manifest, second.manifest])
    check_types(df)
    # one row per charge (the service's 0-credit "job" records are not charges), in the ledger's order
    assert list(df["job_id"]) == [e.job_id for e in ledger]
    assert list(df["credits"]) == [e.amount for e in ledger]
    assert list(df["balance"]) == [e.balance for e in ledger]  # falling down the file
    assert df["balance"].is_monotonic_decreasing and df["credits"].sum() == 13.0  # the sharpener costs 2
    # to the microsecond, not cut to the second; never before the service's charge
    assert (df["timestamp"].dt.microsecond > 0).any()
    for ts, e in zip(df["timestamp"], ledger, strict=True):
        assert ts.timestamp() >= math.floor(e.at)
    # the user's input and output, our tool name with the vendor's module beside it, the batch
    recorded = manifest_items(first.manifest, second.manifest)
    for row in df.itertuples():
        item = recorded[row.job_id]
        assert (row.source, row.output, row.batch) == (item["source"], item["output"], item["batch"])
    assert set(zip(df["tool"], df["vendor_tool"], strict=True)) == {
        ("upscale", "enlarge3"),
        ("sharpen", "sharpen3"),
    }
    assert set(df["kind"]) == {"download"} and set(df["api"]) == {"web"}
    assert totals(df)["per_tool"] == {"upscale": 9.0, "sharpen": 4.0}

    # Without manifests: the same charges, balances and order; what only the manifests know is empty.
    bare = client.usage_report()
    check_types(bare)
    assert list(bare["balance"]) == [e.balance for e in ledger]
    assert list(bare["tool"]) == list(df["tool"]) and list(bare["vendor_tool"]) == list(df["vendor_tool"])
    for col in ("source", "output", "job_id", "batch"):
        assert bare[col].isna().all(), col

    # every page of points/record is read, whatever the page size
    before = sum(1 for r in sim.state.requests if r.path == "/web_api/v1/points/record")
    paged = client.run(client.aio.backend.usage(limit=5))
    pages = sum(1 for r in sim.state.requests if r.path == "/web_api/v1/points/record") - before
    assert pages == math.ceil(22 / 5)  # 11 job records and 11 downloads
    assert len(paged) == 22


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
    assert set(zip(df["tool"], df["vendor_tool"], strict=True)) == {("upscale", "upscale")}
    by_job = {e.job_id: e for e in confirms}
    recorded = manifest_items(*manifests)
    for row in df.itertuples():
        assert row.credits == by_job[row.job_id].amount
        assert row.timestamp.timestamp() >= math.floor(by_job[row.job_id].at)
        item = recorded[row.job_id]
        assert (row.source, row.output, row.batch) == (item["source"], item["output"], item["batch"])
    assert df["balance"].isna().all()  # the Open API gives no balance per charge

    # the client that ran them knows the charges too; with the manifests they are not counted twice
    seen = runner.usage_report(manifests)
    pd.testing.assert_frame_equal(seen, df)
    alone = runner.usage_report()
    assert len(alone) == 6 and alone["credits"].sum() == 9.0 and alone["source"].isna().all()


def test_one_report_of_both_apis_equals_the_ledger(
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The demo's report: the web history with the Open API batches' manifests, in one file."""
    for i in range(4):
        make_image(f"in/p{i}.jpg", 16, 12)
    web, open_ = client_factory(sim, "web"), client_factory(sim, "open")
    a = web.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "web_x2")))
    b = open_.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "open_dn"), "denoise"))
    c = web.run_batch(batch_spec(str(tmp_path / "in/p[01].jpg"), str(tmp_path / "web_sharp"), "sharpen", {}))
    df = web.usage_report([a.manifest, b.manifest, c.manifest])
    check_types(df)
    charges = sim.state.charges()
    assert len(df) == len(charges) == 10
    assert sorted(df["job_id"]) == sorted(e.job_id for e in charges)
    per_api = {api: sum(e.amount for e in charges if e.api == api) for api in ("web", "open")}
    assert totals(df)["per_api"] == per_api == {"web": 8.0, "open": 4.0}
    assert df["source"].notna().all() and df["output"].notna().all() and df["batch"].notna().all()

    url = write_report(df, str(tmp_path / "credit_usage.csv"))
    back = pd.read_csv(url)
    assert list(back.columns) == list(COLUMNS)
    assert pd.to_datetime(back["timestamp"], utc=True).is_monotonic_increasing
    assert back["credits"].sum() == sum(e.amount for e in charges)
    web_rows = back[back["api"] == "web"]
    assert web_rows["balance"].is_monotonic_decreasing and web_rows["balance"].notna().all()

    summary = usage_summary(df)
    total = summary.iloc[-1]
    assert (total["api"], total["tool"], total["items"], total["charges"], total["credits"]) == (
        "all",
        "all",
        10,
        10,
        12.0,
    )


def _rec(ts: str, tool: str, credits: float, **kw: object) -> UsageRecord:
    base: dict = {"kind": "download", "balance": None, "source": None, "job_id": None, "api": "web"}
    return UsageRecord(timestamp=ts, tool=tool, credits=credits, **{**base, **kw})


def test_join_keeps_the_service_order_and_prefers_the_named_input() -> None:
    # the service's history, newest first: three charges in one second, and a 0-credit job record
    history = [
        _rec("2025-03-01 10:00:05", "enlarge3", 1, balance=7.0, source="enlarge3_b.jpg.jpg"),
        _rec("2025-03-01 10:00:05", "enlarge3", 1, balance=8.0, source="enlarge3_c.jpg.jpg"),
        _rec("2025-03-01 10:00:05", "enlarge3", 1, balance=9.0, source="enlarge3_a.jpg.jpg"),
        _rec("2025-03-01 10:00:04", "enlarge3", 0, kind="job", balance=10.0, source="enlarge3_a.jpg.jpg"),
    ]
    # what the engine recorded: b's result was stored first, though it was charged last
    recorded = [
        _rec(
            f"2025-0{month}-01T10:00:0{t}+00:00",
            "upscale",
            1,
            source=f"in/{n}.jpg",
            job_id=f"j{n}",
            vendor_tool="enlarge3",
        )
        for month, t, n in (
            (3, "5.2", "b"),
            (3, "5.7", "a"),
            (3, "5.6", "c"),
            (2, "5", "old"),
        )  # old: not here
    ]
    rows = join_web_history(history, recorded)
    assert [r.job_id for r in rows] == ["ja", "jc", "jb"]  # the service's order (balance 9, 8, 7)
    assert [r.balance for r in rows] == [9.0, 8.0, 7.0]
    df = usage_frame(rows)
    assert list(df["job_id"]) == ["ja", "jc", "jb"]
    # no later than the next charge: a's and c's times come down to b's (stored first)
    assert [t.isoformat() for t in df["timestamp"]] == ["2025-03-01T10:00:05.200000+00:00"] * 3
    assert list(df["tool"]) == ["upscale"] * 3 and list(df["vendor_tool"]) == ["enlarge3"] * 3


def test_join_reads_a_service_clock_in_another_time_zone() -> None:
    """A service writing its local time (UTC+8, no zone) is matched and corrected, not left apart."""
    history = [  # newest first, Beijing time
        _rec("2025-03-01 18:00:09", "enlarge3", 1, balance=8.0, source="enlarge3_x.jpg.jpg"),
        _rec("2025-03-01 18:00:05", "enlarge3", 1, balance=9.0, source="enlarge3_a.jpg.jpg"),
    ]
    recorded = [
        _rec(
            "2025-03-01T10:00:05.5+00:00",
            "upscale",
            1,
            source="in/a.jpg",
            job_id="ja",
            vendor_tool="enlarge3",
        )
    ]
    rows = join_web_history(history, recorded)
    assert [(r.job_id, r.balance) for r in rows] == [("ja", 9.0), (None, 8.0)]
    df = usage_frame(rows)
    assert [t.isoformat() for t in df["timestamp"]] == [
        "2025-03-01T10:00:05.500000+00:00",
        "2025-03-01T10:00:09+00:00",  # the unmatched charge, in UTC too
    ]


def test_summary_counts_items_charges_and_credits() -> None:
    at = "2025-03-01T10:00:0{}+00:00"
    rows = [
        _rec(at.format(1), "upscale", 1, source="in/a.jpg", job_id="1", batch="m1"),
        _rec(at.format(2), "upscale", 1, source="in/a.jpg", job_id="2", batch="m1"),  # redone: force
        _rec(at.format(3), "sharpen", 2, source="in/a.jpg", job_id="3", batch="m2"),
        _rec(at.format(4), "upscale", 1),  # from the history alone: the input is unknown
        _rec(
            at.format(5),
            "video_upscale",
            2,
            api="open",
            kind="charge",
            source="v.mp4",
            job_id="4",
            batch="m3",
        ),
    ]
    summary = usage_summary(usage_frame(rows))
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert {c: str(t) for c, t in summary.dtypes.items()} == SUMMARY_COLUMNS
    assert summary.astype(object).values.tolist() == [
        ["open", "video_upscale", 1, 1, 1, 2.0, 0.0],
        ["open", "all", 1, 1, 1, 2.0, 0.0],
        ["web", "sharpen", 1, 1, 1, 2.0, 0.0],
        ["web", "upscale", 1, 2, 3, 3.0, 0.0],
        ["web", "all", 2, 3, 4, 5.0, 0.0],
        ["all", "all", 3, 4, 5, 7.0, 0.0],
    ]
    text = summary_text(summary)
    assert text.splitlines()[0].split() == list(SUMMARY_COLUMNS)
    md = summary_markdown(summary)
    assert "| web | upscale | 1 | 2 | 3 | 3 | 0 |" in md and md.endswith("**Total: 7 credits**")
    empty = usage_summary(usage_frame([]))
    assert empty.astype(object).values.tolist() == [["all", "all", 0, 0, 0, 0.0, 0.0]]


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
    df = client.usage_report([result.manifest])
    assert len(df) == 2
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
        assert list(back["source"]) == list(df["source"]) and list(back["job_id"]) == list(df["job_id"])


def test_write_report_needs_a_known_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        write_report(usage_frame([]), str(tmp_path / "usage.xlsx"))
    assert not list(tmp_path.iterdir())


def test_empty_report_is_typed() -> None:
    df = usage_frame([])
    assert df.empty and list(df.columns) == list(COLUMNS)
    assert str(df["timestamp"].dtype) == "datetime64[ns, UTC]" and df["credits"].dtype == "float64"
    assert totals(df) == {"total": 0.0, "per_tool": {}, "per_api": {}, "per_day": {}}


def test_results_served_by_the_cache_are_items_not_charges(tmp_path: Path) -> None:
    """A cached item: a `cached` row of 0 credits with what it saved; counted as an item, not a charge."""
    from vance_provider.core.state.manifest import ItemState, Manifest, ManifestItem

    m = Manifest(str(tmp_path / "m.json"))
    m.meta = {"identity": {"api": "open", "tool": "upscale"}}
    paid = ManifestItem(
        "in/a.jpg", "f", "c", output="out/a.jpg", state=ItemState.DONE, job_id="j1", credits=1.0
    )
    paid.charges = [{"job_id": "j1", "credits": 1.0, "at": 1.7e9}]
    cached = ManifestItem(
        "in/b.jpg", "f", "c", output="out/b.jpg", state=ItemState.DONE, cached=True, saved=2.0
    )
    m.items["in/a.jpg"], m.items["in/b.jpg"] = paid, cached
    m.save()
    df = usage_frame(records_from_manifests([m.url]))
    assert df[["source", "kind", "credits", "saved"]].astype(object).values.tolist() == [
        ["in/a.jpg", "charge", 1.0, 0.0],
        ["in/b.jpg", "cached", 0.0, 2.0],
    ]  # in time order: the charge (2023) before the cache hit (now)
    total = usage_summary(df).iloc[-1]
    assert (total["items"], total["charges"], total["credits"], total["saved"]) == (2, 1, 1.0, 2.0)
