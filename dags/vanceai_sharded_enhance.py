"""Scale one flat bucket out: list it once, split it into shards, one mapped task per shard.

``plan_shards`` lists the source once and writes one small shard file per shard under
``<destination>/_vance_shards/<run>/``; only their URLs go through XCom. Each mapped task reads
its shard file and runs its share into the shared destination, with a manifest and a lease of
its own (inputs whose outputs would share a name are always in one shard, so outputs never
collide). A cleared or retried task resumes from its shard's manifest; nothing is paid twice.

``by="hash"`` keeps every file in the same shard from run to run (keep ``shards`` the same), so
this DAG can run on a schedule over a growing bucket. All VanceAI tasks run in the pool
``vanceai``::

    airflow pools set vanceai 16 "VanceAI account: jobs in flight" --include-deferred

With ``pool_slots=4`` and ``max_concurrency=4`` every task holds the slots of the jobs it keeps in
flight, so at most 16 jobs run across all DAGs; ``--include-deferred`` keeps deferred tasks
counted while the triggerer waits for their jobs.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from vance_provider.operators.vanceai import VanceAIEnhanceOperator, VanceAIShardOperator

JOBS_PER_TASK = 4

with DAG(
    dag_id="vanceai_sharded_enhance",
    description="One flat bucket split into shards: dynamic task mapping, bounded by the 'vanceai' pool",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={
        "source": Param(
            "s3://vance-demo/incoming/",
            type="string",
            description="a flat prefix (or glob) listed once and split into shards",
        ),
        "destination": Param(
            "s3://vance-demo/enhanced-sharded",
            type="string",
            description="fsspec prefix shared by every shard (each keeps its own manifest there)",
        ),
        "shards": Param(4, type="integer", minimum=1, description="how many mapped tasks at most"),
        "storage_conn_id": Param("", type="string", description="storage connection (empty: environment)"),
    },
    tags=["vanceai", "example"],
) as dag:
    shards = VanceAIShardOperator(
        task_id="plan_shards",
        source="{{ params.source }}",
        destination="{{ params.destination }}",
        shards="{{ params.shards }}",
        by="hash",
        storage_conn_id="{{ params.storage_conn_id }}",
    )

    enhanced = VanceAIEnhanceOperator.partial(
        task_id="enhance_shard",
        tool="upscale",
        config={"scale": 2},
        max_concurrency=JOBS_PER_TASK,
        pool="vanceai",
        pool_slots=JOBS_PER_TASK,
        poll_interval=5,
        storage_conn_id="{{ params.storage_conn_id }}",
    ).expand(shard_file=shards.output)

    @task
    def total(summaries) -> dict:
        summaries = list(summaries)
        return {
            "shards": len(summaries),
            "total": sum(s["total"] for s in summaries),
            "done": sum(s["done"] for s in summaries),
            "credits_spent": round(sum(s["credits_spent"] for s in summaries), 3),
        }

    total(enhanced.output)
