"""A reconstructable job of shard assets for the multiprocess test (configured through the
environment): one dataset asset per shard folder, run by the multiprocess executor, at most four
steps at once, every step on one account (one key)."""

import json
import os

import dagster as dg

from dagster_vance import VanceAIResource, build_enhanced_dataset_asset


def sharded_job() -> dg.JobDefinition:
    shards = json.loads(os.environ["VANCE_TEST_SHARDS"])  # [[source, destination], ...]
    assets = [
        build_enhanced_dataset_asset(
            f"shard_{i}",
            source,
            destination,
            "upscale",
            {"scale": 2},
            max_concurrency=4,
            poll_interval=0.05,
            pool=None,  # the executor's max_concurrent bounds the steps
        )
        for i, (source, destination) in enumerate(shards)
    ]
    defs = dg.Definitions(
        assets=assets,
        jobs=[dg.define_asset_job("sharded_job", selection=assets)],
        resources={
            "vanceai": VanceAIResource(
                api_token=dg.EnvVar("VANCE_API_TOKEN"), base_url=dg.EnvVar("VANCE_BASE_URL")
            )
        },
        executor=dg.multiprocess_executor.configured({"max_concurrent": 4}),
    )
    return defs.resolve_job_def("sharded_job")
