"""The credit usage asset: a typed DataFrame equal to the simulator's ledger, a swappable IO manager,
and a daily schedule."""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from dagster_vance import build_credit_usage_asset, build_credit_usage_schedule, build_enhanced_dataset_asset
from tests.dagster.conftest import materialization, put_images, vance_resource
from vance_provider.core.reports.credits import COLUMNS
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster

# The report's typed columns, as the core defines them (one source of truth).
TYPED = {k: v for k, v in COLUMNS.items() if k != "timestamp"}


def assert_typed(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["timestamp", *TYPED]
    assert isinstance(df["timestamp"].dtype, pd.DatetimeTZDtype) and str(df["timestamp"].dt.tz) == "UTC"
    assert {c: str(df[c].dtype) for c in TYPED} == TYPED


@pytest.mark.slow
def test_usage_equals_the_ledger_on_both_apis(
    sim: SimulatorServer,
    instance: dg.DagsterInstance,
    token: str,
    api: str,
    images: Any,
    tmp_path: Path,
    s3: dict[str, Any],
) -> None:
    local = build_enhanced_dataset_asset(
        "local_x2", str(images("in", 3)), str(tmp_path / "out"), "upscale", {"scale": 2}, poll_interval=0.05
    )
    put_images(s3["fs"], f"s3://{s3['bucket']}/in", 2)
    remote = build_enhanced_dataset_asset(
        "remote_denoised",
        f"s3://{s3['bucket']}/in/",
        f"s3://{s3['bucket']}/out/",
        "denoise",
        storage_options=s3["public"],
        storage_resource_key="vance_storage",
        poll_interval=0.05,
    )
    usage = build_credit_usage_asset(datasets=[local, remote])
    assert usage.asset_deps[usage.key] == {local.key, remote.key}

    result = dg.materialize(
        [local, remote, usage],
        instance=instance,
        resources={"vanceai": vance_resource(sim), "vance_storage": s3["storage"]},
    )
    assert result.success
    df = result.output_for_node("vanceai_credit_usage")
    assert_typed(df)
    charges = sim.state.charges()
    assert len(charges) == 5
    assert df["credits"].sum() == sum(e.amount for e in charges)  # exactly, not approximately
    md = materialization(result, "vanceai_credit_usage")
    assert md["vance/api"] == api and md["vance/credits_total"] == 5.0
    per_tool = {r.data["tool"]: r.data["credits"] for r in md["vance/per_tool"].records}
    assert list(per_tool) == ["upscale", "denoise"]  # a table, the largest first
    if api == "open":
        assert per_tool == {"upscale": 3.0, "denoise": 2.0}
        assert sorted(df["job_id"]) == sorted(e.job_id for e in charges)
        assert md["vance/manifests"] == 2
    else:  # the web API's history names its modules; the manifests give our tool names beside them
        assert per_tool == {"upscale": 3.0, "denoise": 2.0}
        assert "enlarge3" in set(df["vendor_tool"])
    assert sum(r.data["credits"] for r in md["vance/per_day"].records) == 5.0
    assert "**Total: 5 credits**" in md["vance/summary"]
    assert md["dagster/row_count"] == len(df)
    assert [c.name for c in md["dagster/column_schema"].columns] == list(df.columns)
    assert all(c.description for c in md["dagster/column_schema"].columns)  # all 13 described
    # The report's credits for the datasets' batches equal what their manifests recorded.
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "matches_datasets_spend"]
    assert check.passed and check.metadata["vance/recorded_in_manifests"].value == 5.0
    # The default IO manager pickled it into the instance's storage.
    assert Path(md["path"]).exists()


@pytest.mark.slow
def test_the_io_manager_can_be_swapped(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    use_token("open")
    stored: dict[str, pd.DataFrame] = {}

    class MemoryIOManager(dg.IOManager):
        def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
            stored[context.asset_key.to_user_string()] = obj

        def load_input(self, context: dg.InputContext) -> pd.DataFrame:
            return stored[context.asset_key.to_user_string()]

    photos = build_enhanced_dataset_asset(
        "photos", str(images("in", 2)), str(tmp_path / "out"), "upscale", poll_interval=0.05
    )
    usage = build_credit_usage_asset("usage", datasets=[photos], io_manager_key="usage_io")
    resources = {"vanceai": vance_resource(sim), "usage_io": MemoryIOManager()}
    assert dg.materialize([photos, usage], instance=instance, resources=resources).success
    assert stored["usage"]["credits"].sum() == 2.0


def test_daily_schedule_targets_the_usage_asset(tmp_path: Path) -> None:
    photos = build_enhanced_dataset_asset("photos", str(tmp_path), str(tmp_path / "out"), "upscale")
    usage = build_credit_usage_asset(datasets=[photos])
    schedule = build_credit_usage_schedule(usage)
    assert schedule.cron_schedule == "0 6 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.name == "vanceai_credit_usage_daily"
    defs = dg.Definitions(
        assets=[photos, usage], schedules=[schedule], resources={"vanceai": vance_resource_unbound()}
    )
    dg.Definitions.validate_loadable(defs)
    job = defs.resolve_job_def(schedule.job_name)
    assert job.asset_layer.executable_asset_keys == {usage.key}
    [request] = schedule.evaluate_tick(dg.build_schedule_context()).run_requests or []
    assert isinstance(request, dg.RunRequest)


def vance_resource_unbound() -> Any:
    from dagster_vance import VanceAIResource

    return VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"))


def test_usage_without_datasets_on_the_web_api(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any
) -> None:
    use_token("web")
    usage = build_credit_usage_asset()
    result = dg.materialize([usage], instance=instance, resources={"vanceai": vance_resource(sim)})
    df = result.output_for_node("vanceai_credit_usage")
    assert_typed(df)
    assert len(df) == 0 and materialization(result, "vanceai_credit_usage")["vance/credits_total"] == 0.0


@pytest.mark.parametrize("cron", ["0 0 * * *", "30 7 * * 1-5"])
def test_schedule_cron_is_configurable(cron: str, tmp_path: Path) -> None:
    usage = build_credit_usage_asset()
    assert build_credit_usage_schedule(usage, cron_schedule=cron, name="usage").cron_schedule == cron
