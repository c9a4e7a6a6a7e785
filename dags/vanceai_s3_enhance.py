"""Every hour, enhance the files that arrived under an S3 prefix (deferrable: no worker waits).

- ``source`` / ``destination`` come from the Airflow Variables ``vanceai_source`` and
  ``vanceai_destination`` when set, else from the DAG params (overridable per run).
- The VanceAI token is in the connection ``vanceai_default`` (password). S3 credentials come from
  the AWS connection named by the Variable ``vanceai_storage_conn_id`` (login/password, or any
  other form Airflow takes, such as ``role_arn``; extras ``endpoint_url``/``region_name``), or from
  the usual ``AWS_*`` environment variables.
- "New files only" needs no bookkeeping here: the batch manifest beside the outputs records what
  is done, so each run submits only the inputs it has not seen, and a retried run pays nothing twice.

Nothing here touches the network or the metadata DB at parse time: every Variable is read
through a template, when the task runs.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetAlias, Param

from vance_provider.operators.vanceai import VanceAIEnhanceOperator

DEFAULT_SOURCE = "s3://vance-demo/incoming/"
DEFAULT_DESTINATION = "s3://vance-demo/enhanced/"

with DAG(
    dag_id="vanceai_s3_enhance",
    description="Upscale new images under an S3 prefix with VanceAI (deferrable)",
    schedule="@hourly",
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "source": Param(
            DEFAULT_SOURCE, type="string", description="fsspec URL, prefix or glob of the inputs"
        ),
        "destination": Param(DEFAULT_DESTINATION, type="string", description="fsspec prefix for the outputs"),
    },
    tags=["vanceai", "example"],
) as dag:
    VanceAIEnhanceOperator(
        task_id="enhance_new_files",
        vanceai_conn_id="vanceai_default",
        source="{{ var.value.get('vanceai_source', params.source) }}",
        destination="{{ var.value.get('vanceai_destination', params.destination) }}",
        storage_conn_id="{{ var.value.get('vanceai_storage_conn_id', '') }}",
        tool="upscale",
        config={"scale": 2},
        max_concurrency=8,
        on_failure="continue",
        deferrable=True,
        poll_interval=10,
        timeout=timedelta(hours=2),
        cancel_on_timeout=True,
        # The destination comes from a Variable: an alias gets an event for the rendered URL.
        outlets=[AssetAlias("vanceai_s3_enhanced")],
    )
