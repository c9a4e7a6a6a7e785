"""What the operators, the sensor and the triggers share: the UI colours, the XCom bounds, list
arguments, the ``deferrable`` default, the errors that fail a task at once, and cancelling jobs.

Nothing heavy is imported here: the core is imported when a task runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from vance_provider.airflow_compat import AirflowFailException, conf

if TYPE_CHECKING:
    from vance_provider.core import VanceClient

UI_COLOR = "#6C4DFF"
UI_FGCOLOR = "#FFFFFF"
MAX_XCOM_ITEMS = 50  # output URLs in a batch's XCom and in its trigger's event
DEFER_MARGIN = 120.0  # Airflow's own deferral timeout comes after the trigger's deadline
RESUME_MARGIN = 3.0  # after the supervisor's wake-up, for the scheduler's loop to read the exit


def parse_list(value: Any) -> list[str]:
    """A value, a list, or the text of a rendered list (``"['a', 'b']"``) or of ``a,b``."""
    import ast

    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return [s.strip() for s in text.split(",") if s.strip()]
        value = ast.literal_eval(text)
    return [str(v) for v in value]


def seconds(timeout: float | timedelta) -> float:
    return timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)


def ends_at(timeout: float | timedelta | None, started: float | None = None) -> float | None:
    """When a wait of ``timeout`` that started at ``started`` (default: now) ends, in epoch seconds."""
    if timeout is None:
        return None
    return (started or time.time()) + seconds(timeout)


def defer_timeout(end_time: float | None) -> timedelta | None:
    """Airflow's own timeout of a deferral whose trigger gives up at ``end_time``: a little later."""
    return None if end_time is None else timedelta(seconds=max(0.0, end_time - time.time()) + DEFER_MARGIN)


def resume_after() -> float:
    """When a task that defers now may resume (epoch seconds), for its trigger's event.

    The worker that defers ends its try with success in the executor's eyes, and the resumed
    task keeps the try number. Airflow's task supervisor notices that worker's exit only at its
    next wake-up, up to ``[workers] min_heartbeat_interval`` (5 s) later, and the scheduler reads
    the report in its next loop. Up to Airflow 3.3.2, a report read while the resumed task is
    queued or running fails it as "killed externally" (apache/airflow#67287, #72716): in a real
    deployment 5 of 34 deferrable batches of 100-200 images that the triggerer finished within
    that window failed so. Read while the task is still deferred, it is ignored.
    ``[vanceai] resume_after_deferral`` sets the wait (0: none).
    """
    setting = (conf.get("vanceai", "resume_after_deferral", fallback="") or "").strip()
    if setting:
        try:
            return time.time() + float(setting)
        except ValueError:
            raise ValueError(
                f"[vanceai] resume_after_deferral must be a number of seconds (or empty), not {setting!r}"
            ) from None
    return time.time() + conf.getfloat("workers", "min_heartbeat_interval", fallback=5.0) + RESUME_MARGIN


def default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


class VanceAITaskMixin:
    """What every VanceAI operator and sensor has: its colours in the UI, and ``deferrable``
    defaulting to ``[operators] default_deferrable``."""

    ui_color = UI_COLOR
    ui_fgcolor = UI_FGCOLOR

    @staticmethod
    def deferrable_or_default(deferrable: bool | None) -> bool:
        return default_deferrable() if deferrable is None else deferrable


@contextlib.contextmanager
def vance_errors() -> Iterator[None]:
    """Errors no retry can fix (configuration, inputs, credits) fail the task without retrying."""
    from vance_provider.core.api.errors import PERMANENT_ERRORS

    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def cancel_jobs(client: VanceClient, job_ids: list[str], log: Any) -> list[str]:
    """Cancel jobs where the API can (the Open API); elsewhere they are left running (the web API
    charges nothing until a result is downloaded)."""
    from vance_provider.core.api.errors import VanceError

    if not client.capabilities.can_cancel:
        log.warning(
            "the VanceAI %s API cannot cancel jobs; they are not charged unless downloaded", client.api
        )
        return []
    canceled = []
    for job_id in job_ids:
        try:
            client.cancel(job_id)
            canceled.append(job_id)
        except VanceError as exc:
            log.warning("could not cancel VanceAI job %s: %s", job_id, exc)
    log.info("canceled %d VanceAI job(s)", len(canceled))
    return canceled
