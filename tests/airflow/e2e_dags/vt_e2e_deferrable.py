"""End-to-end test DAGs: a deferrable batch run by a real scheduler, API server and triggerer.

``vt_e2e_deadline`` is the same batch with a deadline of a few seconds: its jobs (held by the
simulator) are still in flight when the trigger's event is ready, and the trigger holds that event
until the task may resume ([vanceai] resume_after_deferral).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from vance_provider.operators.vanceai import VanceAIEnhanceOperator

for dag_id, timeout in (("vt_e2e_deferrable", 600), ("vt_e2e_deadline", 3)):
    with DAG(
        dag_id,
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
            timeout=timeout,
            retries=0,
        )
