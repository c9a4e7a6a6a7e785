"""The few Airflow names that moved between Airflow 3.0 and 3.3, imported from one place.

They come from ``apache-airflow-providers-common-compat`` (``airflow.providers.common.compat.sdk``),
which picks ``airflow.sdk`` where it has the name and the older location otherwise. Nothing else
differs for this provider between 3.0, 3.1, 3.2 and 3.3, except two things that only 3.3 has
and that are used when present:

* ``BaseTrigger.on_kill`` - called by the triggerer when a user marks a deferred task failed,
  clears it or marks it succeeded (:data:`TRIGGER_ON_KILL`). On older versions the triggers
  detect the same situation themselves (see ``vance_provider.triggers.vanceai``).
* the task state store (``context["task_state_store"]``): :func:`task_state_store` returns it,
  or ``None`` with one log line. ``VanceAISubmitJobOperator`` keeps its job id there, so a retry
  waits for the earlier try's job instead of submitting again (batches keep theirs in the manifest).
"""

from __future__ import annotations

import logging
from typing import Any

from vance_provider.supported_airflow import require_supported_airflow

require_supported_airflow()

from airflow import __version__ as AIRFLOW_VERSION  # noqa: E402

# The names that moved between Airflow 3.0 and 3.3, from Airflow's own compatibility provider.
from airflow.providers.common.compat.sdk import (  # noqa: E402
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowTaskTimeout,
    Asset,
    AssetAlias,
    BaseHook,
    BaseOperator,
    BaseOperatorLink,
    SkipMixin,
    TaskDeferred,
    conf,
)
from airflow.triggers.base import BaseTrigger, TriggerEvent  # noqa: E402

log = logging.getLogger(__name__)

AIRFLOW_V = tuple(int(p) for p in AIRFLOW_VERSION.split(".")[:2])
#: The triggerer calls ``BaseTrigger.on_kill`` when a user acts on a deferred task (Airflow >= 3.3).
TRIGGER_ON_KILL = hasattr(BaseTrigger, "on_kill")

_said: set[str] = set()


def task_state_store(context: Any) -> Any:
    """The task state store of Airflow >= 3.3, or None (said once per process in the log)."""
    try:
        store = context["task_state_store"]
    except (KeyError, TypeError):
        store = None
    if store is None and "task_state_store" not in _said:
        _said.add("task_state_store")
        log.info(
            "Airflow %s has no task state store: the VanceAI batch keeps its state in its manifest only",
            AIRFLOW_VERSION,
        )
    return store


__all__ = [
    "AIRFLOW_V",
    "AIRFLOW_VERSION",
    "TRIGGER_ON_KILL",
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowTaskTimeout",
    "Asset",
    "AssetAlias",
    "BaseHook",
    "BaseOperator",
    "BaseOperatorLink",
    "BaseTrigger",
    "SkipMixin",
    "TaskDeferred",
    "TriggerEvent",
    "conf",
    "task_state_store",
]
