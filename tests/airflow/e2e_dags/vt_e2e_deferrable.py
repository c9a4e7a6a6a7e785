"""End-to-end test DAG: a deferrable batch run by a real scheduler, API server and triggerer."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from vance_provider.operators.vanceai import VanceAIEnhanceOperator

with DAG(
    "vt_e2e_deferrable",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={"source": Param("/tmp/in", type="string"), "destination": Param("/tmp/out", type="string")},
):
    VanceAIEnhanceOperator(
        task_id="enhance",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        tool="upscale",
        config={"scale": 2},
        deferrable=True,
        poll_interval=0.5,
        max_poll_interval=1,
        timeout=600,
    )

# The same batch with a deadline of a few seconds: its jobs (held by the simulator) are still in
# flight when the trigger's event is ready, and the trigger holds that event until the task may
# resume ([vanceai] resume_after_deferral).
with DAG(
    "vt_e2e_deadline",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={"source": Param("/tmp/in", type="string"), "destination": Param("/tmp/out", type="string")},
):
    VanceAIEnhanceOperator(
        task_id="enhance",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        tool="upscale",
        config={"scale": 2},
        deferrable=True,
        poll_interval=0.5,
        max_poll_interval=1,
        timeout=3,
        retries=0,
    )
