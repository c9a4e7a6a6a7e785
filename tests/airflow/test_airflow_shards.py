"""The sharded example DAG: a flat source listed once, split into shard files, one mapped task per
shard, against the simulator on local disk and on an S3 server (moto)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.airflow.helpers import load_dag, ti_states, xcom
from tests.conftest import image_bytes

NAMES = ["a.jpg", "a.png", "b.jpg", "c.png", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]


def sharded_dag() -> Any:
    dag = load_dag("vanceai_sharded_enhance")
    dag.get_task("enhance_shard").partial_kwargs.update(poll_interval=0.1, max_poll_interval=0.5)
    return dag


def mapped_states(dr: Any) -> list[str]:
    return [s for k, s in ti_states(dr).items() if k.startswith("enhance_shard[")]


@pytest.mark.slow
def test_sharded_dag_on_local_disk(sim, vance_conn, tmp_path: Path) -> None:
    vance_conn("open")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in NAMES:
        (src / name).write_bytes(image_bytes(24, 16, "PNG" if name.endswith("png") else "JPEG"))
    conf = {"source": str(src), "destination": str(out), "shards": 3}
    dag = sharded_dag()
    dr = dag.test(run_conf=conf)
    urls = xcom(dr, "plan_shards")
    assert 1 <= len(urls) <= 3 and all(u.startswith(f"{out}/_vance_shards/") for u in urls)
    assert len(json.dumps(urls)) < 1000  # the XCom carries the shard files' URLs only
    assert mapped_states(dr) == ["success"] * len(urls)
    total = xcom(dr, "total")
    assert (total["total"], total["done"], total["credits_spent"]) == (len(NAMES), len(NAMES), len(NAMES))
    assert len(sim.state.charges()) == len(NAMES) and not sim.state.double_charges()
    outputs = sorted(p.name for p in out.iterdir() if p.is_file())
    assert len(outputs) == len(NAMES)  # a.jpg and a.png were in one shard: named apart, none lost
    # Another run (a new plan of the same hash split) resumes each shard: nothing paid again.
    (src / "h.jpg").write_bytes(image_bytes(24, 16, "JPEG"))
    dr2 = sharded_dag().test(run_conf=conf)
    total2 = xcom(dr2, "total")
    assert (total2["total"], total2["done"], total2["credits_spent"]) == (len(NAMES) + 1, len(NAMES) + 1, 1)
    assert len(sim.state.charges()) == len(NAMES) + 1 and not sim.state.double_charges()


@pytest.mark.slow
def test_sharded_dag_on_s3(sim, vance_conn, bucket, s3fs_plain, s3_server, monkeypatch) -> None:
    vance_conn("web")
    secret = "moto-shard-secret-42"
    monkeypatch.setenv(
        "AIRFLOW_CONN_S3_SHARDS",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": secret,
                "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"},
            }
        ),
    )
    for name in NAMES:
        s3fs_plain.pipe(
            f"{bucket}/incoming/{name}", image_bytes(24, 16, "PNG" if name.endswith("png") else "JPEG")
        )
    conf = {
        "source": f"s3://{bucket}/incoming/",
        "destination": f"s3://{bucket}/enhanced",
        "shards": 4,
        "storage_conn_id": "s3_shards",
    }
    dr = sharded_dag().test(run_conf=conf)
    urls = xcom(dr, "plan_shards")
    assert all(u.startswith(f"s3://{bucket}/enhanced/_vance_shards/") for u in urls)
    assert mapped_states(dr) == ["success"] * len(urls)
    assert xcom(dr, "total")["done"] == len(NAMES)
    assert len(sim.state.charges()) == len(NAMES) and not sim.state.double_charges()
    s3fs_plain.invalidate_cache()
    written = b"".join(s3fs_plain.cat(p) for p in s3fs_plain.find(f"{bucket}/enhanced/_vance_shards"))
    assert secret.encode() not in written and b"testing" not in written
    outputs = [p for p in s3fs_plain.find(f"{bucket}/enhanced/") if "/_vance" not in p]
    assert len(outputs) == len(NAMES)
    dr2 = sharded_dag().test(run_conf=conf)
    assert xcom(dr2, "total")["credits_spent"] == 0
    assert len(sim.state.charges()) == len(NAMES)


@pytest.mark.parametrize("kwargs", [{}, {"source": "s3://in/", "shard_file": "s3://x/shard-00000.json"}])
def test_enhance_takes_source_or_shard_file(kwargs: dict[str, Any]) -> None:
    from vance_provider.operators.vanceai import VanceAIEnhanceOperator

    with pytest.raises(ValueError, match="either source"):
        VanceAIEnhanceOperator(task_id="t", tool="upscale", destination="s3://out/", **kwargs)
