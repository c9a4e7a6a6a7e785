"""The same batch operator on the second vendor, VisionCraft: upscale a folder with one change.

The connection ``visioncraft_default`` has type ``vanceai``, the VisionCraft key as password and
the extra ``{"api": "visioncraft"}``. VisionCraft answers synchronously, so the task runs in the
worker (``deferrable=False``): there is nothing to wait for.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from vance_provider.operators.vanceai import VanceAIEnhanceOperator

with DAG(
    dag_id="vanceai_visioncraft_upscale",
    description="Upscale a folder with VisionCraft through the VanceAI batch operator",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={
        "source": Param(
            "s3://vance-demo/incoming/", type="string", description="fsspec URL, prefix or glob of the inputs"
        ),
        "destination": Param(
            "s3://vance-demo/visioncraft-x2/", type="string", description="fsspec prefix for the outputs"
        ),
    },
    tags=["vanceai", "visioncraft", "example"],
) as dag:
    VanceAIEnhanceOperator(
        task_id="upscale",
        vanceai_conn_id="visioncraft_default",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        tool="upscale",
        max_concurrency=4,
        deferrable=False,
    )
