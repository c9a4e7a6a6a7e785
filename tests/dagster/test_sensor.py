"""Per-file dynamic partitions and the sensor that adds them for new files."""

import io
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from dagster_vance import build_credit_usage_asset, build_enhanced_dataset_asset, build_new_files_sensor
from tests.conftest import image_bytes
from tests.dagster.conftest import checks, materialization, put_images, vance_resource
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster


def tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions, cursor: str | None
) -> Any:
    """Evaluate one tick, and apply its partition requests as the daemon would."""
    with dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),
        cursor=cursor,
        definitions=defs,
        resources=dict(defs.resources or {}),  # what the daemon binds from the definitions
    ) as context:
        data = sensor.evaluate_tick(context)
    for request in data.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return data


def materialize_partitions(
    asset: dg.AssetsDefinition,
    keys: list[str],
    sim: SimulatorServer,
    instance: dg.DagsterInstance,
    resources: dict[str, Any] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    results = []
    for key in keys:
        bound = {"vanceai": vance_resource(sim), **(resources or {})}
        result = dg.materialize([asset], partition_key=key, instance=instance, resources=bound)
        assert result.success
        results.append(result)
    return results


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        return img.size


@pytest.mark.slow
def test_new_files_become_partitions_and_runs(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    use_token("open")
    src, out = images("in", 2), tmp_path / "out"
    (src / "sub").mkdir()
    (src / "sub" / "q.jpg").write_bytes(image_bytes(32, 32))
    (src / "notes.txt").write_text("not media")
    photos = build_enhanced_dataset_asset(
        "photos", str(src), str(out), "upscale", {"scale": 2}, partitions="per_file", poll_interval=0.05
    )
    sensor = build_new_files_sensor(photos, minimum_interval_seconds=30)
    usage = build_credit_usage_asset(datasets=[photos])
    defs = dg.Definitions(
        assets=[photos, usage], sensors=[sensor], resources={"vanceai": vance_resource(sim)}
    )
    assert sensor.name == "photos_new_files"
    assert isinstance(photos.partitions_def, dg.DynamicPartitionsDefinition)

    first = tick(sensor, instance, defs, None)
    keys = sorted(r.partition_key for r in first.run_requests)
    assert keys == ["p0.jpg", "p1.jpg", "sub/q.jpg"]
    assert sorted(instance.get_dynamic_partitions("photos_files")) == keys
    assert all(r.asset_selection == [dg.AssetKey("photos")] for r in first.run_requests)

    results = materialize_partitions(photos, keys, sim, instance)
    assert size_of(out / "p0.jpg") == (128, 96)
    assert size_of(out / "sub" / "q.jpg") == (64, 64)
    assert (out / "_vance_partitions" / "sub" / "q.jpg.json").exists()  # one manifest per partition
    md = materialization(results[-1], "photos")
    assert (md["vance/partition"], md["vance/inputs"], md["vance/done"]) == ("sub/q.jpg", 1, 1)
    assert all(c.passed for r in results for c in checks(r).values())
    assert len(sim.state.charges()) == 3

    # The credit usage report finds every partition's manifest.
    usage_result = dg.materialize([usage], instance=instance, resources={"vanceai": vance_resource(sim)})
    df = usage_result.output_for_node("vanceai_credit_usage")
    assert sorted(df["job_id"]) == sorted(e.job_id for e in sim.state.charges())
    assert df["credits"].sum() == pytest.approx(sum(e.amount for e in sim.state.charges()))

    # Nothing new: no run. A new file and a changed file: one new partition, two runs.
    assert tick(sensor, instance, defs, first.cursor).run_requests == []
    images("in", 1, start=2)
    (src / "p0.jpg").write_bytes(image_bytes(50, 50))
    third = tick(sensor, instance, defs, first.cursor)
    assert sorted(r.partition_key for r in third.run_requests) == ["p0.jpg", "p2.jpg"]
    assert [list(r.partition_keys) for r in third.dynamic_partitions_requests] == [["p2.jpg"]]
    materialize_partitions(photos, ["p0.jpg", "p2.jpg", "p1.jpg"], sim, instance)  # p1: unchanged, free
    assert size_of(out / "p0.jpg") == (100, 100)
    assert len(sim.state.charges()) == 5 and sim.state.double_charges() == []


@pytest.mark.slow
def test_sensor_on_s3(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, s3: dict[str, Any]
) -> None:
    use_token("web")
    fs, bucket = s3["fs"], s3["bucket"]
    put_images(fs, f"s3://{bucket}/in", 2)
    photos = build_enhanced_dataset_asset(
        "s3_photos",
        f"s3://{bucket}/in/",
        f"s3://{bucket}/out/",
        "upscale",
        storage_options=s3["public"],
        storage_resource_key="vance_storage",
        partitions="per_file",
        poll_interval=0.05,
    )
    sensor = build_new_files_sensor(photos)
    resources = {"vanceai": vance_resource(sim), "vance_storage": s3["storage"]}
    defs = dg.Definitions(assets=[photos], sensors=[sensor], resources=resources)

    first = tick(sensor, instance, defs, None)
    assert sorted(r.partition_key for r in first.run_requests) == ["p0.jpg", "p1.jpg"]
    materialize_partitions(photos, ["p0.jpg"], sim, instance, {"vance_storage": s3["storage"]})
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/out/p0.jpg") and not fs.exists(f"{bucket}/out/p1.jpg")

    put_images(fs, f"s3://{bucket}/in", 1, start=2)
    second = tick(sensor, instance, defs, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["p2.jpg"]
    assert len(sim.state.charges()) == 1


def test_sensor_needs_a_partitioned_dataset(tmp_path: Path) -> None:
    flat = build_enhanced_dataset_asset("flat", str(tmp_path), str(tmp_path / "o"), "upscale")
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="per_file"):
        build_new_files_sensor(flat)
