"""The engine shared by the Airflow provider, the Dagster assets, the CLI and notebooks.

It imports neither Airflow nor Dagster.
"""

from .batch import BatchResult, BatchSpec, Progress, run_batch
from .client import AsyncVanceClient, VanceClient, detect_api
from .credits import totals, usage_frame, usage_report, write_report
from .errors import *  # noqa: F403 - the error hierarchy is part of the public surface
from .manifest import ItemState, Manifest
from .models import Balance, Job, JobStatus, UsageRecord
from .retry import RetryPolicy
from .tools import ToolCall, resolve

__all__ = [
    "AsyncVanceClient",
    "Balance",
    "BatchResult",
    "BatchSpec",
    "ItemState",
    "Job",
    "JobStatus",
    "Manifest",
    "Progress",
    "RetryPolicy",
    "ToolCall",
    "UsageRecord",
    "VanceClient",
    "detect_api",
    "resolve",
    "run_batch",
    "totals",
    "usage_frame",
    "usage_report",
    "write_report",
]
