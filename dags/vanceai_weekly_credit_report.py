"""Every week, write the VanceAI credit usage of the past week to CSV and Parquet.

The web API reports the account's full history. The Open API keeps none, so the report also
reads the manifests of the batches listed in the ``manifests`` param (or the Variable
``vanceai_manifests``, comma-separated) and counts the charges they recorded.
Set the param ``window`` to ``all`` for the whole history instead of the DAG run's interval.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from vance_provider.operators.vanceai import VanceAICreditReportOperator

WINDOW_START = "{{ data_interval_start if params.window == 'interval' else '' }}"
WINDOW_END = "{{ data_interval_end if params.window == 'interval' else '' }}"
MANIFESTS = "{{ var.value.get('vanceai_manifests', params.manifests | join(',')) }}"

with DAG(
    dag_id="vanceai_weekly_credit_report",
    description="Weekly VanceAI credit usage report",
    schedule="@weekly",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={
        "reports": Param("s3://vance-demo/reports", type="string", description="where the reports go"),
        "manifests": Param(
            ["s3://vance-demo/enhanced/_vance_manifest.json"],
            type="array",
            description="batch manifests whose charges are counted (the Open API keeps no history)",
        ),
        "window": Param(
            "interval",
            enum=["interval", "all"],
            description="interval: this run's week; all: the whole history",
        ),
    },
    tags=["vanceai", "example"],
) as dag:
    for fmt in ("csv", "parquet"):
        VanceAICreditReportOperator(
            task_id=f"usage_{fmt}",
            destination="{{ params.reports }}/vanceai_usage_{{ ds_nodash }}." + fmt,
            manifests=MANIFESTS,
            start=WINDOW_START,
            end=WINDOW_END,
            storage_conn_id="{{ var.value.get('vanceai_storage_conn_id', '') }}",
        )
