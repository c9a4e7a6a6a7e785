"""The example project's Python assets: VanceAI-enhanced image and video datasets, local and on S3.

This module is part of the `dg` project's ``defs/`` folder (beside ``photos_yaml_x2/defs.yaml``);
``dg check defs --use-active-venv`` validates the whole project, ``dagster dev -f
examples/dagster_project/definitions.py`` runs it. Loading makes no network call and needs no
secret: the token is read when a run starts.

Environment:
    VANCE_API_TOKEN            the VanceAI token (web API) or Open API key (sk_live_...)
    VANCE_BASE_URL             optional: the simulator (``vance-sim``) or a proxy
    VANCE_EXAMPLE_DATA         local data folder (default: ./data beside this file)
    VANCE_EXAMPLE_S3_PREFIX    S3 prefix of the S3 datasets (default: s3://vance-example); once set,
                               the credit usage report reads their manifests too
    AWS_ENDPOINT_URL           optional: an S3-compatible endpoint (MinIO, moto, ...);
                               credentials come from the usual AWS chain (env, profile, role)

Concurrency: every dataset asset runs in the pool ``vanceai``. Limit it (for example to two
assets talking to the account at once) with ``dagster instance concurrency set vanceai 2``, or
for every unconfigured pool with the ``dagster.yaml`` next to this file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from dagster_vance import (
    VanceAIResource,
    build_credit_usage_asset,
    build_credit_usage_schedule,
    build_enhanced_dataset_asset,
    build_new_files_sensor,
)

PROJECT = Path(__file__).resolve().parents[2]  # examples/dagster_project
DATA = Path(os.environ.get("VANCE_EXAMPLE_DATA") or PROJECT / "data")
S3 = os.environ.get("VANCE_EXAMPLE_S3_PREFIX", "s3://vance-example").rstrip("/")


def s3_options() -> dict[str, Any]:
    """fsspec/s3fs options from the environment (no secret is written here)."""
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options


# --- local folders ---------------------------------------------------------------------------------
photos_x2 = build_enhanced_dataset_asset(
    "photos_x2",
    source=str(DATA / "photos"),
    destination=str(DATA / "photos_x2"),
    tool="upscale",
    config={"scale": 2},
    credit_budget=200,
    max_concurrency=8,
)

clips_x2 = build_enhanced_dataset_asset(  # video tools need the Open API (an sk_live_ key)
    "clips_x2",
    source=str(DATA / "clips"),
    destination=str(DATA / "clips_x2"),
    tool="video_upscale",
    config={"scale": 2},
    credit_budget=100,
    max_concurrency=2,
)

# --- the same from S3; the photos one partitioned per file and fed by a sensor ----------------
s3_photos_x2 = build_enhanced_dataset_asset(
    "s3_photos_x2",
    source=f"{S3}/photos/",
    destination=f"{S3}/photos_x2/",
    tool="upscale",
    config={"scale": 2},
    storage_options=s3_options(),
    partitions="per_file",
)

s3_clips_x2 = build_enhanced_dataset_asset(
    "s3_clips_x2",
    source=f"{S3}/clips/",
    destination=f"{S3}/clips_x2/",
    tool="video_upscale",
    config={"scale": 2},
    storage_options=s3_options(),
    max_concurrency=2,
)

datasets = [photos_x2, clips_x2, s3_photos_x2, s3_clips_x2]
# The report lists the manifests of the datasets it is given, and fails on a store it cannot read.
# The S3 datasets are given once an S3 prefix is set, so a local-only try (no AWS credentials)
# gets its report too.
credit_usage = build_credit_usage_asset(
    datasets=datasets if os.environ.get("VANCE_EXAMPLE_S3_PREFIX") else [photos_x2, clips_x2]
)

# --- the second vendor: the same factory, a VisionCraft resource (VISIONCRAFT_API_TOKEN) ----------
visioncraft_photos_x2 = build_enhanced_dataset_asset(
    "visioncraft_photos_x2",
    source=str(DATA / "photos"),
    destination=str(DATA / "visioncraft_photos_x2"),
    tool="upscale",
    resource_key="visioncraft",
    max_concurrency=4,
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[*datasets, credit_usage, visioncraft_photos_x2],
        sensors=[
            build_new_files_sensor(
                s3_photos_x2,
                minimum_interval_seconds=120,
                # On once an S3 prefix is given: s3_photos_x2's partitions (one per file) then
                # appear as the files do, instead of an empty "0 partitions".
                default_status=dg.DefaultSensorStatus.RUNNING
                if os.environ.get("VANCE_EXAMPLE_S3_PREFIX")
                else dg.DefaultSensorStatus.STOPPED,
            )
        ],
        schedules=[build_credit_usage_schedule(credit_usage, cron_schedule="0 6 * * *")],
        resources={
            "vanceai": VanceAIResource(
                api_token=dg.EnvVar("VANCE_API_TOKEN"),
                base_url=os.environ.get("VANCE_BASE_URL") or None,
                max_concurrency=8,
            ),
            "visioncraft": VanceAIResource(
                api_token=dg.EnvVar("VISIONCRAFT_API_TOKEN"),
                api="visioncraft",
                base_url=os.environ.get("VISIONCRAFT_BASE_URL") or None,
            ),
        },
    )
