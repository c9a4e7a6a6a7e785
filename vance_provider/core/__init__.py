"""The engine shared by the Airflow provider, the Dagster assets, the CLI and notebooks.

It imports neither Airflow nor Dagster.
"""

from .api.errors import *  # noqa: F403 - the error hierarchy is part of the public surface
from .api.models import Balance, Job, JobStatus, UsageRecord
from .batch.runner import run_batch
from .batch.spec import BatchResult, BatchSpec, Progress
from .client import AsyncVanceClient, VanceClient, detect_api
from .reports.credits import totals, usage_frame, usage_report, write_report
from .state.manifest import ItemState, Manifest
from .tools import ToolCall, resolve
from .transport.retry import RetryPolicy

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
