"""Scale a big batch out with dynamic task mapping, bounded by a pool.

Each shard (a sub-prefix) becomes one mapped task instance with its own destination (a manifest
belongs to one destination, so shards must not share one). All VanceAI tasks run in the pool
``vanceai``, which bounds the jobs the whole account has in flight::

    airflow pools set vanceai 16 "VanceAI account: jobs in flight" --include-deferred

With ``pool_slots=4`` and ``max_concurrency=4`` every task holds the slots of the jobs it keeps in
flight, so at most 16 jobs run across all DAGs; ``--include-deferred`` keeps deferred tasks
counted while the triggerer waits for their jobs.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param, task

from vance_provider.operators.vanceai import VanceAIEnhanceOperator

JOBS_PER_TASK = 4

with DAG(
    dag_id="vanceai_sharded_enhance",
    description="Dynamic task mapping over shards, bounded by the 'vanceai' pool",
    schedule=None,
    start_date=datetime(2025, 1, 1),
    catchup=False,
    params={
        "shards": Param(
            ["s3://vance-demo/incoming/a/", "s3://vance-demo/incoming/b/"],
            type="array",
            description="one prefix per shard: each becomes one mapped task",
        ),
        "destination": Param(
            "s3://vance-demo/enhanced-sharded",
            type="string",
            description="fsspec prefix; shard n writes under <destination>/shard-n/",
        ),
    },
    tags=["vanceai", "example"],
) as dag:

    @task
    def list_shards(**context) -> list[str]:
        return list(context["params"]["shards"])

    enhanced = VanceAIEnhanceOperator.partial(
        task_id="enhance_shard",
        destination="{{ params.destination }}/shard-{{ ti.map_index }}/",
        tool="upscale",
        config={"scale": 2},
        max_concurrency=JOBS_PER_TASK,
        pool="vanceai",
        pool_slots=JOBS_PER_TASK,
        poll_interval=5,
    ).expand(source=list_shards())

    @task
    def total(summaries) -> dict:
        summaries = list(summaries)
        return {
            "shards": len(summaries),
            "done": sum(s["done"] for s in summaries),
            "credits_spent": round(sum(s["credits_spent"] for s in summaries), 3),
        }

    total(enhanced.output)
