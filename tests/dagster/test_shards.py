"""A dataset split into shard partitions (``partitions=shard_partitions(n)``): one listing, one
shard file per partition, each input paid once, a re-materialization pays only what is new."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_vance import build_enhanced_dataset_asset
from dagster_vance.shards import shard_partitions
from tests.conftest import image_bytes
from tests.dagster.conftest import checks, vance_resource
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster


@pytest.mark.slow
def test_shard_partitions_pay_each_input_once(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, images: Any, tmp_path: Path
) -> None:
    use_token("open")
    src, out = images("in", 5), tmp_path / "out"
    (src / "p0.png").write_bytes(image_bytes(24, 16, "PNG"))  # the same output name as p0.jpg
    photos = build_enhanced_dataset_asset(
        "photos",
        str(src),
        str(out),
        "upscale",
        {"scale": 2},
        partitions=shard_partitions(3),
        poll_interval=0.05,
    )
    keys = photos.partitions_def.get_partition_keys()
    assert keys == ["shard-00000-of-00003", "shard-00001-of-00003", "shard-00002-of-00003"]
    resources = {"vanceai": vance_resource(sim)}
    tags = {"dagster/backfill": "bf1"}  # the partitions of one backfill share one plan
    for key in keys:
        result = dg.materialize(
            [photos], partition_key=key, instance=instance, resources=resources, tags=tags
        )
        assert result.success
        assert checks(result)["outputs_valid"].passed and checks(result)["inputs_accounted_for"].passed
    assert len(list((out / "_vance_shards" / "dagster-bf1").glob("shard-*.json"))) == 3
    assert len(sim.state.charges()) == 6 and not sim.state.double_charges()
    assert len([p for p in out.iterdir() if p.is_file()]) == 6
    # A new file, a new backfill: only the new file is paid for, in the shard its name hashes to.
    (src / "zz-new.jpg").write_bytes(image_bytes(24, 16))
    for key in keys:
        result = dg.materialize(
            [photos],
            partition_key=key,
            instance=instance,
            resources=resources,
            tags={"dagster/backfill": "bf2"},
        )
        assert result.success
    assert len(sim.state.charges()) == 7 and not sim.state.double_charges()


def test_shard_partitions_refuse_a_bad_count() -> None:
    with pytest.raises(dg.DagsterInvalidDefinitionError):
        shard_partitions(0)
