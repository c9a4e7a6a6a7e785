"""Reconstructable jobs for re-execution tests (configured through the environment)."""

import os

import dagster as dg

from dagster_vance import VanceAIResource, build_enhanced_dataset_asset


def flaky_photos_job() -> dg.JobDefinition:
    """One dataset asset that fails when any item fails; re-executing it resumes from the manifest."""
    photos = build_enhanced_dataset_asset(
        "flaky_photos",
        os.environ["VANCE_TEST_SOURCE"],
        os.environ["VANCE_TEST_DEST"],
        "upscale",
        {"scale": 2},
        poll_interval=0.05,
        on_failure="fail",
    )
    defs = dg.Definitions(
        assets=[photos],
        jobs=[dg.define_asset_job("flaky_photos_job", selection=[photos])],
        resources={
            "vanceai": VanceAIResource(
                api_token=dg.EnvVar("VANCE_API_TOKEN"), base_url=dg.EnvVar("VANCE_BASE_URL")
            )
        },
        executor=dg.in_process_executor,
    )
    return defs.resolve_job_def("flaky_photos_job")
