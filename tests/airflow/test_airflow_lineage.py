"""OpenLineage events of the VanceAI operators, through the OpenLineage provider's file transport
in ``dag.test()``: one input dataset per source prefix, the destination prefix as output, the
``vanceai`` run facet - and no token anywhere in the event."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.airflow.helpers import load_dag, ti_states

pytest.importorskip("airflow.providers.openlineage")


def _events(job_name: str, event_type: str = "COMPLETE") -> list[dict]:
    path = Path(os.environ["VANCE_TEST_AIRFLOW_HOME"]) / "openlineage-events.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        if line.strip():
            event = json.loads(line)
            if event.get("job", {}).get("name") == job_name and event.get("eventType") == event_type:
                events.append(event)
    return events


@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferrable"])
def test_enhance_emits_datasets_and_run_facet(deferrable, sim, vance_conn, make_image, tmp_path) -> None:
    token = vance_conn("open")
    for i in range(3):
        make_image(f"in/photo_{i}.jpg", 32, 24)
    src, dst = tmp_path / "in", tmp_path / "out"
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable, enhance.poll_interval = deferrable, 0.1
    dr = dag.test(run_conf={"source": f"{src}/", "destination": str(dst)})
    assert ti_states(dr)["enhance"] == "success"

    [event] = [
        e
        for e in _events("vanceai_credit_checked_batch.enhance")
        if e["run"]["runId"] and str(dst) in json.dumps(e["outputs"])
    ]
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [("file", str(src))]
    assert [(d["namespace"], d["name"]) for d in event["outputs"]] == [("file", str(dst))]
    facet = event["run"]["facets"]["vanceai"]
    assert (facet["tool"], facet["api"]) == ("upscale", "open")
    assert (facet["total"], facet["done"], facet["failed"], facet["credits_spent"]) == (3, 3, 0, 3.0)
    assert facet["_schemaURL"].endswith("#the-vanceai-run-facet")
    text = Path(os.environ["VANCE_TEST_AIRFLOW_HOME"], "openlineage-events.jsonl").read_text()
    assert token not in text


def test_dataset_naming_rules() -> None:
    from vance_provider.operators._lineage import dataset_name, prefixes

    assert dataset_name("s3://bucket/in/photos/") == ("s3://bucket", "in/photos/")
    assert dataset_name("s3a://bucket/key.jpg") == ("s3://bucket", "key.jpg")
    assert dataset_name("gs://bucket/a/b") == ("gs://bucket", "a/b")
    assert dataset_name("gcs://bucket/a") == ("gs://bucket", "a")
    assert dataset_name("abfss://box@acct.dfs.core.windows.net/p/q") == (
        "abfss://box@acct.dfs.core.windows.net",
        "p/q",
    )
    assert dataset_name("hdfs://nn:8020/data") == ("hdfs://nn:8020", "/data")
    assert dataset_name("file:///tmp/x") == ("file", "/tmp/x")
    assert dataset_name("relative/dir") == ("file", os.path.abspath("relative/dir"))
    assert dataset_name("s3://AKIAKEY:secret@bucket/p?X-Amz-Signature=abc") == ("s3://bucket", "p")
    # One dataset per batch prefix, not per file.
    assert prefixes("s3://b/in/") == ["s3://b/in/"]
    assert prefixes("s3://b/in/**/*.jpg") == ["s3://b/in/"]
    assert prefixes(["s3://b/in/a.jpg", "s3://b/in/b.png", "s3://b/other/c.jpg"]) == [
        "s3://b/in/",
        "s3://b/other/",
    ]
