"""Single jobs, the sensor, credit checks, usage reports and mapped shards, through ``dag.test()``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.airflow.helpers import (
    all_xcoms,
    jobs_finish_after_first_look,
    load_dag,
    rendered_fields,
    ti_states,
    xcom,
)


@pytest.mark.slow
@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
@pytest.mark.parametrize("api", ["open", "web"])
def test_submit_and_sensor(
    api, deferrable, sim_factory, vance_conn, make_image, tmp_path, trigger_runs
) -> None:
    sim = sim_factory()
    token = vance_conn(api, server=sim)
    src = make_image("single.jpg", 40, 30)
    dag = load_dag("vt_job_and_sensor")
    for task_id in ("sense", "fetch"):
        dag.get_task(task_id).deferrable = deferrable
    with jobs_finish_after_first_look(sim):  # the sensor's first poke finds the job running
        dr = dag.test(run_conf={"source": str(src), "destination": str(tmp_path / "out")})
    assert ti_states(dr) == {"submit": "success", "sense": "success", "fetch": "success"}
    job_id = xcom(dr, "submit", "job_id")
    assert xcom(dr, "submit") == job_id
    fetched = xcom(dr, "fetch")
    assert fetched["status"] == "succeeded"
    # The sensor deferred (the job was still running); "fetch" defers too unless its job was done.
    assert set(trigger_runs) == ({"VanceAIJobTrigger"} if deferrable else set())
    # The same input and tool: the idempotency key (Open API) returns the first job - paid once.
    if api == "open":
        assert fetched["id"] == job_id
    with Image.open(fetched["output"]) as img:
        assert img.size == (80, 60)
    assert not sim.state.double_charges()
    assert len(sim.state.charges()) == 1
    for _, _, value in all_xcoms(dr):
        assert token not in repr(value)
    assert all(token not in repr(f) for f in rendered_fields(dr))


@pytest.mark.slow
def test_sensor_fails_on_failed_job(vance_conn, make_image) -> None:
    from tests.conftest import fast_config
    from vance_provider.sim import Faults, SimulatorServer

    with SimulatorServer(fast_config(faults=Faults(fail_job=1.0))) as server:
        vance_conn("open", server=server)
        dag = load_dag("vt_job_and_sensor")
        for deferrable in (False, True):
            dag.get_task("sense").deferrable = deferrable
            dr = dag.test(run_conf={"source": str(make_image()), "destination": "/nonexistent"})
            states = ti_states(dr)
            assert states["submit"] == "success" and states["sense"] == "failed", states
            assert states["fetch"] == "upstream_failed"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pass", "fail", "skip"])
def test_credit_check(mode, sim_factory, vance_conn, make_image) -> None:
    from vance_provider.sim import Account

    server = sim_factory(accounts=[Account(credits=2.0 if mode != "pass" else 100.0)])
    vance_conn("open", server=server)
    for i in range(3):
        src = make_image(f"cc/p{i}.jpg")
    dag = load_dag("vt_credit_check")
    dag.get_task("check").on_insufficient = "fail" if mode == "fail" else "skip"
    dr = dag.test(run_conf={"source": str(src.parent)})
    states = ti_states(dr)
    if mode == "pass":
        assert states == {"check": "success", "spend": "success", "after": "success"}
        assert xcom(dr, "check") == {
            "api": "open",
            "available": 100.0,
            "needed": 3.0,
            "inputs": 3,
            "ok": True,
        }
    elif mode == "fail":
        assert states == {"check": "failed", "spend": "upstream_failed", "after": "upstream_failed"}
    else:
        assert states == {"check": "success", "spend": "skipped", "after": "skipped"}
    assert not server.state.charges()


def test_credit_check_explicit_min_credits(sim, vance_conn) -> None:
    from vance_provider.operators.vanceai import VanceAICreditCheckOperator

    vance_conn("web")
    op = VanceAICreditCheckOperator(task_id="c", min_credits=5, margin=1)
    assert op.execute({}) == {
        "api": "web",
        "available": sim.state.balance(),
        "needed": 6.0,
        "inputs": None,
        "ok": True,
    }
    with pytest.raises(ValueError, match="min_credits"):
        VanceAICreditCheckOperator(task_id="bad")


@pytest.mark.slow
@pytest.mark.parametrize("api", ["open", "web"])
def test_weekly_report_dag(api, sim, vance_conn, make_image, tmp_path) -> None:
    from vance_provider.core import BatchSpec
    from vance_provider.hooks.vanceai import VanceAIHook

    token = vance_conn(api)
    for i in range(3):
        make_image(f"rep/in/p{i}.jpg")
    out = tmp_path / "rep" / "out"
    with VanceAIHook().get_client() as client:
        result = client.run_batch(
            BatchSpec(
                source=str(tmp_path / "rep" / "in"),
                destination=str(out),
                tool="upscale",
                config={"scale": 2},
                poll_interval=0.05,
            )
        )
    assert result.done == 3
    dag = load_dag("vanceai_weekly_credit_report")
    reports = tmp_path / "reports"
    dr = dag.test(run_conf={"reports": str(reports), "manifests": [result.manifest], "window": "all"})
    assert ti_states(dr) == {"usage_csv": "success", "usage_parquet": "success"}
    ledger_total = sum(e.amount for e in sim.state.charges())
    assert ledger_total == 3.0
    csv_summary, parquet_summary = xcom(dr, "usage_csv"), xcom(dr, "usage_parquet")
    for summary, reader in ((csv_summary, pd.read_csv), (parquet_summary, pd.read_parquet)):
        assert summary["total"] == ledger_total
        assert summary["per_tool"] and sum(summary["per_tool"].values()) == ledger_total
        df = reader(summary["url"])
        assert df[df["credits"] > 0]["credits"].sum() == ledger_total
        assert Path(summary["url"]).exists() and summary["url"].startswith(str(reports))
    assert csv_summary["url"].endswith(".csv") and parquet_summary["url"].endswith(".parquet")
    for _, _, value in all_xcoms(dr):
        assert token not in json.dumps(value, default=str)


def test_report_window_excludes_other_weeks(sim, vance_conn, make_image, tmp_path) -> None:
    from vance_provider.operators.vanceai import VanceAICreditReportOperator

    vance_conn("web")
    from vance_provider.hooks.vanceai import VanceAIHook

    with VanceAIHook().get_client() as client:
        client.enhance(
            str(make_image()), str(tmp_path / "o.jpg"), "upscale", {"scale": 2}, poll_interval=0.05
        )
    op = VanceAICreditReportOperator(
        task_id="r", destination=str(tmp_path / "r.csv"), start="2020-01-01", end="2020-01-08"
    )
    assert op.execute({})["total"] == 0
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        VanceAICreditReportOperator(task_id="r2", destination=str(tmp_path / "r.txt"))


@pytest.mark.slow
def test_mapped_shards_with_pool(sim, vance_conn, make_image, tmp_path) -> None:
    vance_conn("open")
    for i in range(4):
        make_image(f"flat/p{i}.jpg", 32, 24)
    dag = load_dag("vanceai_sharded_enhance")
    mapped = dag.get_task("enhance_shard")
    assert mapped.partial_kwargs["pool"] == "vanceai" and mapped.partial_kwargs["pool_slots"] == 4
    mapped.partial_kwargs["poll_interval"] = 0.1
    dest = tmp_path / "sharded"
    dr = dag.test(run_conf={"source": str(tmp_path / "flat"), "shards": 2, "destination": str(dest)})
    states = ti_states(dr)
    shards = len(xcom(dr, "plan_shards"))
    assert states == {
        "plan_shards": "success",
        **{f"enhance_shard[{i}]": "success" for i in range(shards)},
        "total": "success",
    }, states
    summaries = xcom(dr, "enhance_shard", map_index=None)
    assert sum(s["done"] for s in summaries) == 4
    assert xcom(dr, "total") == {"shards": shards, "total": 4, "done": 4, "credits_spent": 4.0}
    outs = sorted(dest.glob("*.jpg"))
    assert len(outs) == 4
    with Image.open(outs[0]) as img:
        assert img.size == (64, 48)
    assert len(list((dest / "_vance_shards" / "manifests" / "hash-2").glob("shard-*.json"))) == shards
    assert len(sim.state.charges()) == 4 and not sim.state.double_charges()
