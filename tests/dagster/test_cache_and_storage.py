"""The result cache, storage credentials from a resource, and an asset body of one's own."""

import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_vance import (
    VanceAIResource,
    VanceStorageResource,
    build_enhanced_dataset_asset,
    dataset_props,
    storage_options_of,
    vance_dataset_asset,
)
from tests.dagster.conftest import S3_SECRET, checks, materialization, put_images, scan_for, vance_resource
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster


@pytest.mark.slow
def test_backfill_second_partition_served_from_cache(
    sim: SimulatorServer, instance: dg.DagsterInstance, token: str, api: str, images: Any, tmp_path: Path
) -> None:
    """Per-file partitions over two folders holding the same files, one cache: the partitions of
    the second folder pay 0, and their outputs are the first folder's, byte for byte."""
    images("in/day1", 2)
    shutil.copytree(tmp_path / "in" / "day1", tmp_path / "in" / "day2")
    photos = build_enhanced_dataset_asset(
        "photos",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "upscale",
        {"scale": 2},
        partitions="per_file",
        poll_interval=0.05,
    )
    keys = [f"{day}/p{i}.jpg" for day in ("day1", "day2") for i in range(2)]
    instance.add_dynamic_partitions("photos_files", keys)
    resources = {"vanceai": vance_resource(sim, cache=str(tmp_path / "vance-cache"))}

    spent, cached, saved = [], [], []
    for key in keys:  # a backfill, one partition at a time
        result = dg.materialize([photos], partition_key=key, resources=resources, instance=instance)
        md = materialization(result, "photos")
        spent.append(md["vance/credits_spent"])
        cached.append(md["vance/cached"])
        saved.append(md["vance/credits_saved"])
        assert all(c.passed for c in checks(result).values())
    assert spent == [1.0, 1.0, 0.0, 0.0] and cached == [0, 0, 1, 1] and saved == [0.0, 0.0, 1.0, 1.0]
    assert len(sim.state.charges()) == 2 and not sim.state.double_charges()  # day2 paid 0
    for i in range(2):
        day1 = (tmp_path / "out" / "day1" / f"p{i}.jpg").read_bytes()
        assert day1 == (tmp_path / "out" / "day2" / f"p{i}.jpg").read_bytes()


@pytest.mark.slow
def test_two_datasets_share_the_cache(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    """Two dataset assets over folders sharing two files: the second pays only for its new file."""
    use_token("open")
    images("a", 2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    images("b", 1, start=2)  # one more file, not in the cache
    a = build_enhanced_dataset_asset(
        "a_x2", str(tmp_path / "a"), str(tmp_path / "a_x2"), "upscale", poll_interval=0.05
    )
    b = build_enhanced_dataset_asset(
        "b_x2", str(tmp_path / "b"), str(tmp_path / "b_x2"), "upscale", poll_interval=0.05
    )
    resources = {"vanceai": vance_resource(sim, cache=str(tmp_path / "cache"))}
    first = dg.materialize([a], resources=resources, instance=instance)
    assert materialization(first, "a_x2")["vance/credits_spent"] == 2.0
    second = dg.materialize([b], resources=resources, instance=instance)
    md = materialization(second, "b_x2")
    assert (md["vance/done"], md["vance/cached"], md["vance/credits_spent"], md["vance/credits_saved"]) == (
        3,
        2,
        1.0,
        2.0,
    )
    assert len(sim.state.charges()) == 3
    assert all(c.passed for c in checks(second).values())


@pytest.mark.slow
def test_own_asset_body_with_storage_resource(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, s3: dict[str, Any]
) -> None:
    """``@vance_dataset_asset`` with a body that calls the resource, credentials from a resource."""
    use_token("web")
    fs, bucket = s3["fs"], s3["bucket"]
    put_images(fs, f"s3://{bucket}/in", 2)
    seen: list[str] = []

    @vance_dataset_asset(
        name="mine",
        source=f"s3://{bucket}/in/",
        destination=f"s3://{bucket}/out/",
        tool="upscale",
        config={"scale": 2},
        storage_options=s3["public"],
        storage_resource_key="vance_storage",
        poll_interval=0.05,
    )
    def mine(
        context: dg.AssetExecutionContext, vanceai: VanceAIResource, vance_storage: VanceStorageResource
    ) -> Any:
        seen.append(context.assets_def.key.to_user_string())
        yield from vanceai.materialize_dataset(context, storage=vance_storage)

    props = dataset_props(mine)  # carried in the spec's metadata, no secret in it
    assert props.storage_resource_key == "vance_storage" and props.tool == "upscale"
    assert S3_SECRET not in str(mine.specs_by_key[mine.key].metadata)
    result = dg.materialize(
        [mine],
        resources={"vanceai": vance_resource(sim), "vance_storage": s3["storage"]},
        instance=instance,
    )
    assert result.success and seen == ["mine"]
    md = materialization(result, "mine")
    assert (md["vance/done"], md["vance/credits_spent"]) == (2, 2.0)
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/out/p0.jpg") and fs.exists(f"{bucket}/out/p1.jpg")
    assert scan_for(instance, S3_SECRET) == []
    assert S3_SECRET not in repr(s3["storage"])


def test_storage_options_of_resources() -> None:
    ours = VanceStorageResource(
        endpoint_url="http://minio:9000",
        region_name="eu-west-1",
        aws_access_key_id="AKIA",
        aws_secret_access_key="shh",
        storage_options={"config_kwargs": {"max_pool_connections": 4}},
    )
    assert storage_options_of(ours) == {
        "key": "AKIA",
        "secret": "shh",
        "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"},
        "config_kwargs": {"max_pool_connections": 4},
    }
    assert "shh" not in repr(ours)
    assert storage_options_of(VanceStorageResource(profile_name="ml", use_unsigned_session=False)) == {
        "profile": "ml"
    }

    class S3ResourceLike:  # dagster-aws's S3Resource fields (dagster-aws is not a dependency)
        use_unsigned_session = False
        region_name = "us-east-2"
        endpoint_url = None
        max_attempts = 3
        profile_name = None
        use_ssl = True
        verify = None
        aws_access_key_id = "AKIB"
        aws_secret_access_key = "hush"
        aws_session_token = None

    assert storage_options_of(S3ResourceLike()) == {
        "key": "AKIB",
        "secret": "hush",
        "client_kwargs": {"region_name": "us-east-2"},
        "config_kwargs": {"retries": {"max_attempts": 3}},
    }
    assert storage_options_of(None) is None
    with pytest.raises(dg.DagsterInvariantViolationError, match="VanceStorageResource"):
        storage_options_of(object())
