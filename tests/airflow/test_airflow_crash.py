"""A worker dies (SIGKILL) in the middle of a batch task; the task is run again and finishes,
with nothing submitted or paid twice (the manifest and the idempotency keys carry it over)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.airflow.helpers import ROOT, load_dag, ti_states, xcom

pytestmark = pytest.mark.slow  # starts processes of its own

# The worker: the DAG's own "enhance" task, executed in a process of its own (the first run of the
# DAG needs no more: its credit check only reads the balance).
RUN_TASK = """
import sys
from tests.airflow.helpers import load_dag

class TI:  # what the operator reads of its task instance
    dag_id, task_id, run_id, map_index, try_number = "vanceai_credit_checked_batch", "enhance", "first", -1, 1
    def xcom_push(self, key, value):
        pass

enhance = load_dag("vanceai_credit_checked_batch").get_task("enhance")
enhance.source, enhance.destination = sys.argv[1], sys.argv[2]
enhance.credit_budget = None  # the DAG's "{{ params.credit_budget }}": not rendered here
enhance.deferrable = False
enhance.poll_interval = 0.1
enhance.max_poll_interval = 0.2  # a job the test lets finish is seen at once
enhance.max_concurrency = 2
enhance.execute({"ti": TI(), "outlet_events": {}})
"""


HOLD = 600.0  # seconds of the simulator's clock a job takes: it finishes when the test moves the clock


@pytest.mark.parametrize("api", ["open", "web"])
def test_worker_killed_mid_batch_then_rerun(api, sim_factory, vance_conn, make_image, tmp_path) -> None:
    sim = sim_factory(time_per_job=HOLD)
    vance_conn(api, server=sim)
    for i in range(6):
        make_image(f"in/photo_{i}.jpg", 48, 36)
    src, dst = tmp_path / "in", tmp_path / "out"
    worker = subprocess.Popen(
        [sys.executable, "-c", RUN_TASK, str(src), str(dst)],
        env=dict(os.environ),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120

    def wait_for(condition: Callable[[], bool], what: str) -> None:
        while not condition():
            assert worker.poll() is None, f"the task exited before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def stored() -> list[Path]:
        return [p for p in dst.glob("photo_*") if ".partial" not in p.name]

    def running() -> int:  # started: their end is set on the simulator's clock
        return sum(1 for j in list(sim.state.jobs.values()) if j.status == "processing")

    # The kill lands on a batch with every kind of item: two stored, two in flight, two not sent.
    wait_for(lambda: running() == 2, "the first two jobs to start")
    sim.state.clock.advance(HOLD)  # those two finish; the task stores them and submits two more
    wait_for(lambda: len(stored()) == 2 and running() == 2, "two outputs and two more jobs running")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    assert len(stored()) == 2 and len(sim.state.jobs) == 4 and running() == 2  # as it was at the kill
    sim.state.config.time_per_job = 0.05  # the held jobs finish now, new ones are quick
    sim.state.clock.advance(HOLD)

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
