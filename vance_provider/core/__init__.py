"""The engine shared by the Airflow provider, the Dagster assets, the CLI and notebooks.

It imports neither Airflow nor Dagster.
"""

import sys
import types

if "httpx" not in sys.modules:
    # httpx imports its command-line tool at import time when click and rich are installed
    # (~0.2 s, a third of this package's import): every Airflow task start and deferrable resume
    # would pay it, and the engine never uses it. Stand in for it; the real one loads on first use.
    def _httpx_cli(*args: object, **kwargs: object) -> object:
        del sys.modules["httpx._main"]
        from httpx._main import main

        return main(*args, **kwargs)

    _stub = types.ModuleType("httpx._main")
    _stub.main = _httpx_cli  # type: ignore[attr-defined]
    sys.modules.setdefault("httpx._main", _stub)

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
