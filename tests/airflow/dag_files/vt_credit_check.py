"""Test DAG: a credit check short-circuiting (or failing) a downstream batch."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from vance_provider.operators.vanceai import VanceAICreditCheckOperator

with DAG(
    "vt_credit_check",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={"source": Param("/tmp/in", type="string")},
):
    check = VanceAICreditCheckOperator(
        task_id="check",
        source="{{ params.source }}",
        tool="upscale",
        config={"scale": 2},
        on_insufficient="skip",
    )

    @task
    def spend() -> str:
        return "spent"

    @task
    def after(value: str) -> str:
        return value

    spent = spend()
    check >> spent
    after(spent)
