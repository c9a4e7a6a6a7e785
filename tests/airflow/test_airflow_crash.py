"""A worker dies (SIGKILL) in the middle of a batch task; the task is run again and finishes,
with nothing submitted or paid twice (the manifest and the idempotency keys carry it over)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.airflow.helpers import load_dag, ti_states, xcom

RUN_TASK = """
import sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 3.0
    from airflow.models.dagbag import DagBag
import os
bag = DagBag(dag_folder=os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "vanceai_credit_checked_batch.py"))
dag = bag.dags["vanceai_credit_checked_batch"]
enhance = dag.get_task("enhance")
enhance.deferrable = False
enhance.poll_interval = 0.1
enhance.max_concurrency = 2
dag.test(run_conf={"source": sys.argv[1], "destination": sys.argv[2]})
"""


@pytest.mark.parametrize("api", ["open", "web"])
def test_worker_killed_mid_batch_then_rerun(api, sim_factory, vance_conn, make_image, tmp_path) -> None:
    sim = sim_factory(time_per_job=0.6)
    vance_conn(api, server=sim)
    for i in range(6):
        make_image(f"in/photo_{i}.jpg", 48, 36)
    src, dst = tmp_path / "in", tmp_path / "out"
    worker = subprocess.Popen(
        [sys.executable, "-c", RUN_TASK, str(src), str(dst)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(sim.state.jobs) < 2:  # jobs are in flight: the worker dies now
        assert worker.poll() is None, "the task finished before the kill"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    assert len(list(dst.glob("photo_*"))) < 6  # killed mid-batch: not everything was stored

    dag = load_dag("vanceai_credit_checked_batch")  # the retry / the cleared task, run again
    enhance = dag.get_task("enhance")
    enhance.poll_interval = 0.1
    dr = dag.test(run_conf={"source": str(src), "destination": str(dst)})
    assert ti_states(dr)["enhance"] == "success"
    summary = xcom(dr, "enhance")
    assert summary["done"] == 6 and summary["failed"] == 0
    for out in summary["outputs"]:
        with Image.open(out) as img:
            assert img.size == (96, 72)
    assert sim.state.double_charges() == []
    charged = Counter(sim.state.jobs[e.job_id].source_name for e in sim.state.charges())
    assert len(charged) == 6 and set(charged.values()) == {1}  # every input paid exactly once
    if api == "open":  # the killed worker's jobs were found again, not created twice
        per_key = Counter(j.idempotency_key for j in sim.state.jobs.values())
        assert max(per_key.values()) == 1
    assert not [p for p in Path(dst).iterdir() if ".partial" in p.name]
