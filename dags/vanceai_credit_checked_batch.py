"""Check the VanceAI balance covers a batch, then run it; report what it cost.

``check_credits`` estimates the need (inputs not done yet x the tool's per-job estimate) and,
when the balance is short, skips the batch instead of failing half way (``on_insufficient="skip"``;
use ``"fail"`` to make the run fail). The batch itself stops submitting once its
``credit_budget`` would be exceeded. ``deferrable`` follows ``[operators] default_deferrable``.

Every field of the trigger form reaches the tasks: run it with other folders or another budget
with ``airflow dags trigger vanceai_credit_checked_batch -c '{"source": "s3://bucket/in/",
"destination": "s3://bucket/out/", "credit_budget": 50}'``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, AssetAlias, Param

from vance_provider.operators.vanceai import VanceAICreditCheckOperator, VanceAIEnhanceOperator

with DAG(
    dag_id="vanceai_credit_checked_batch",
    description="Balance check, then a VanceAI batch",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={
        "source": Param(
            "s3://vance-demo/incoming/", type="string", description="fsspec URL, prefix or glob of the inputs"
        ),
        "destination": Param(
            "s3://vance-demo/enhanced-2x/", type="string", description="fsspec prefix for the outputs"
        ),
        "credit_budget": Param(
            500,
            type="number",
            minimum=0,
            description="most credits one run may spend: over it, the batch fails before paying anything",
        ),
    },
    tags=["vanceai", "example"],
) as dag:
    check = VanceAICreditCheckOperator(
        task_id="check_credits",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        tool="upscale",
        config={"scale": 2},
        on_insufficient="skip",
    )
    enhance = VanceAIEnhanceOperator(
        task_id="enhance",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        tool="upscale",
        config={"scale": 2},
        credit_budget="{{ params.credit_budget }}",
        max_concurrency=8,
        poll_interval=5,
        # The destination is templated: an alias gets an asset event for the rendered URL.
        outlets=[AssetAlias("vanceai_credit_checked_batch_outputs")],
    )
    check >> enhance
