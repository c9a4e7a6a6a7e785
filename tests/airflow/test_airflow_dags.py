"""The example DAGs: they parse without errors, without the network and without the heavy core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.airflow.helpers import EXAMPLE_DAGS, asset_events, dagbag_class, load_dag, ti_states, xcom
from tests.conftest import make_bucket

PARSE_OFFLINE = r"""
import json, socket, sys

def no_network(*args, **kwargs):
    raise RuntimeError("network access while parsing DAGs")

socket.socket.connect = no_network
socket.socket.connect_ex = no_network
socket.create_connection = no_network
socket.getaddrinfo = no_network

try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 3.0
    from airflow.models.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags),
                  "core_imported": sorted(m for m in sys.modules if m.startswith("vance_provider.core")),
                  "pandas": "pandas" in sys.modules}))
"""


def test_example_dags_parse_offline_and_light() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_OFFLINE, str(EXAMPLE_DAGS)], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["errors"] == {}
    assert report["dags"] == [
        "vanceai_credit_checked_batch",
        "vanceai_s3_enhance",
        "vanceai_sharded_enhance",
        "vanceai_visioncraft_upscale",
        "vanceai_weekly_credit_report",
    ]
    assert report["core_imported"] == []  # the provider's core is imported only when a task runs
    assert not report["pandas"]


def test_example_dags_in_process() -> None:
    bag = dagbag_class()(dag_folder=str(EXAMPLE_DAGS))
    assert bag.import_errors == {}
    s3 = bag.dags["vanceai_s3_enhance"]
    assert s3.get_task("enhance_new_files").deferrable is True
    assert [a.name for a in s3.get_task("enhance_new_files").outlets] == ["vanceai_s3_enhanced"]
    assert bag.dags["vanceai_weekly_credit_report"].schedule == "@weekly"
    assert bag.dags["vanceai_s3_enhance"].schedule == "@hourly"
    for dag in bag.dags.values():
        assert "vanceai" in dag.tags
        for task in dag.tasks:
            if hasattr(task, "vanceai_conn_id"):  # the VisionCraft example has its own connection
                expected = "visioncraft_default" if "visioncraft" in dag.dag_id else "vanceai_default"
                assert task.vanceai_conn_id == expected


@pytest.mark.slow
def test_s3_dag_against_moto_and_simulator(sim, vance_conn, make_image, monkeypatch, trigger_runs) -> None:
    """The scheduled S3 DAG, end to end: inputs and outputs on an S3 server (moto), credentials from a
    connection named by a Variable, deferrable, and a second run that finds nothing new to pay for."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        fs = s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
        )
        make_bucket(endpoint, "vance-test")
        for i in range(2):
            fs.pipe(f"vance-test/incoming/p{i}.jpg", Path(make_image(f"s3in/p{i}.jpg", 32, 24)).read_bytes())
        vance_conn("open")
        monkeypatch.setenv(
            "AIRFLOW_CONN_S3_MOTO",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            ),
        )
        monkeypatch.setenv("AIRFLOW_VAR_VANCEAI_STORAGE_CONN_ID", "s3_moto")
        monkeypatch.setenv("AIRFLOW_VAR_VANCEAI_SOURCE", "s3://vance-test/incoming/")
        monkeypatch.setenv("AIRFLOW_VAR_VANCEAI_DESTINATION", "s3://vance-test/enhanced/")
        dag = load_dag("vanceai_s3_enhance")
        dag.get_task("enhance_new_files").poll_interval = 0.1
        dr = dag.test()
        assert ti_states(dr) == {"enhance_new_files": "success"}
        summary = xcom(dr, "enhance_new_files")
        assert summary["done"] == 2 and summary["credits_spent"] == 2.0
        assert trigger_runs == ["VanceAIBatchTrigger"]
        # The extra link points at the *rendered* destination (it comes from a Variable).
        console = "https://s3.console.aws.amazon.com/s3/buckets/vance-test?prefix=enhanced/"
        assert xcom(dr, "enhance_new_files", key="vanceai_outputs_url") == console
        assert xcom(dr, "enhance_new_files", key="_link_VanceAIDestinationLink") == console
        [event] = asset_events(dr)
        assert event["done"] == 2
        fs.invalidate_cache()
        outputs = sorted(fs.glob("vance-test/enhanced/*.jpg"))
        assert len(outputs) == 2 and fs.exists("vance-test/enhanced/_vance_manifest.json")
        import io

        with Image.open(io.BytesIO(fs.cat(outputs[0]))) as img:
            assert img.size == (64, 48)
        # A new file arrives; the next run enhances only that one.
        fs.pipe("vance-test/incoming/p9.jpg", Path(make_image("s3in/p9.jpg", 32, 24)).read_bytes())
        dr2 = dag.test()
        summary2 = xcom(dr2, "enhance_new_files")
        assert (summary2["total"], summary2["done"], summary2["credits_spent"]) == (3, 3, 1.0)
        assert len(sim.state.charges()) == 3 and not sim.state.double_charges()
    finally:
        server.stop()
