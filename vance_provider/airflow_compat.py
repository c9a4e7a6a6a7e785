"""The few Airflow names that moved between Airflow 3.0 and 3.3, imported from one place.

``airflow.sdk`` is used where it has the name; the older location otherwise. Nothing else
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

from airflow import __version__ as AIRFLOW_VERSION

try:  # Airflow >= 3.1
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined]

try:  # Airflow >= 3.1
    from airflow.sdk import conf
except ImportError:  # Airflow 3.0
    from airflow.configuration import conf  # type: ignore[no-redef,assignment]

try:  # Airflow >= 3.1
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowTaskTimeout,
        TaskDeferred,
    )
except ImportError:  # Airflow 3.0
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowException,
        AirflowFailException,
        AirflowSensorTimeout,
        AirflowTaskTimeout,
        TaskDeferred,
    )

try:  # Airflow >= 3.1
    from airflow.sdk.bases.skipmixin import SkipMixin
except ImportError:  # Airflow 3.0
    from airflow.providers.standard.utils.skipmixin import SkipMixin  # type: ignore[no-redef,assignment]

from airflow.sdk import Asset, AssetAlias, BaseOperator, BaseOperatorLink
from airflow.triggers.base import BaseTrigger, TriggerEvent

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
