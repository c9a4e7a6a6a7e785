"""OpenLineage events of the VanceAI operators, through the OpenLineage provider's file transport
in ``dag.test()``: one input dataset per source prefix, the destination prefix as output, the
``vanceai`` run facet - and no token anywhere in the event."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.airflow.helpers import ROOT, installed, load_dag, ti_states
from vance_provider.operators._lineage import FACET_SCHEMA

SCHEMA_FILES = (
    ROOT / "docs" / "schemas" / "vanceai-run-facet.json",
    ROOT / "vance_provider" / "operators" / "schemas" / "vanceai-run-facet.json",
)

pytestmark = pytest.mark.skipif(
    not installed("apache-airflow-providers-openlineage"), reason="needs apache-airflow-providers-openlineage"
)


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


@pytest.mark.slow
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
    assert facet["_schemaURL"] == FACET_SCHEMA
    _validate(facet)
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


def _validate(facet: dict) -> None:
    """The facet against the published schema's own part (the RunFacet base is OpenLineage's)."""
    import jsonschema

    schema = json.loads(SCHEMA_FILES[0].read_text())
    own = schema["$defs"]["VanceAIRunFacet"]["allOf"][1]
    jsonschema.validate({k: v for k, v in facet.items() if not k.startswith("_")}, own)


def test_the_facet_schema_is_published_and_shipped() -> None:
    """The docs' schema (what _schemaURL names) and the package's copy are the same file, its id is
    the URL the facet points at, and a facet that breaks it is refused."""
    import jsonschema

    docs, shipped = (p.read_text() for p in SCHEMA_FILES)
    assert docs == shipped
    schema = json.loads(docs)
    assert f"{schema['$id']}#/$defs/VanceAIRunFacet" == FACET_SCHEMA
    assert "example" not in FACET_SCHEMA
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    site = next(line.split(":", 1)[1].strip() for line in mkdocs.splitlines() if line.startswith("site_url:"))
    assert schema["$id"] == f"{site}schemas/vanceai-run-facet.json"
    with pytest.raises(jsonschema.ValidationError):
        _validate(
            {
                "tool": "upscale",
                "api": "open",
                "total": -1,
                "done": 0,
                "failed": 0,
                "skipped": 0,
                "credits_spent": 0,
            }
        )


@pytest.mark.slow
def test_a_failed_batch_emits_a_fail_event_with_its_datasets(sim, vance_conn, make_image, tmp_path) -> None:
    token = vance_conn("open")
    sim.state.config.faults.fail_job = 1.0  # every job fails on the service's side
    for i in range(2):
        make_image(f"failing/photo_{i}.jpg", 32, 24)
    src, dst = tmp_path / "failing", tmp_path / "failed-out"
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable, enhance.poll_interval, enhance.retries = False, 0.1, 0
    dr = dag.test(run_conf={"source": f"{src}/", "destination": str(dst)})
    assert ti_states(dr)["enhance"] == "failed"

    [event] = [
        e for e in _events("vanceai_credit_checked_batch.enhance", "FAIL") if str(dst) in json.dumps(e)
    ]
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [("file", str(src))]
    assert [(d["namespace"], d["name"]) for d in event["outputs"]] == [("file", str(dst))]
    facet = event["run"]["facets"]["vanceai"]
    assert (facet["total"], facet["done"], facet["failed"]) == (2, 0, 2)
    _validate(facet)
    text = Path(os.environ["VANCE_TEST_AIRFLOW_HOME"], "openlineage-events.jsonl").read_text()
    assert token not in text
