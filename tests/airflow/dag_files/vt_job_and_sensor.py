"""Test DAG: submit one job without waiting, sense it, then submit+wait+download another."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from vance_provider.operators.vanceai import VanceAISubmitJobOperator
from vance_provider.sensors.vanceai import VanceAIJobSensor

with DAG(
    "vt_job_and_sensor",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={"source": Param("/tmp/in.jpg", type="string"), "destination": Param("/tmp/out", type="string")},
):
    submit = VanceAISubmitJobOperator(
        task_id="submit",
        source="{{ params.source }}",
        tool="upscale",
        config={"scale": 2},
        wait_for_completion=False,
    )
    sense = VanceAIJobSensor(
        task_id="sense",
        job_ids="{{ ti.xcom_pull(task_ids='submit', key='job_id') }}",
        poke_interval=0.1,
        timeout=60,
    )
    fetch = VanceAISubmitJobOperator(
        task_id="fetch",
        source="{{ params.source }}",
        tool="upscale",
        config={"scale": 2},
        destination="{{ params.destination }}/one",
        poll_interval=0.1,
    )
    submit >> sense >> fetch
