"""``VanceAIJobSensor``: wait until VanceAI jobs succeed (poke, reschedule or deferred)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

from vance_provider._common import (
    VanceAITaskMixin,
    cancel_jobs,
    defer_timeout,
    ends_at,
    parse_list,
    resume_after,
)
from vance_provider.airflow_compat import AirflowException, AirflowSensorTimeout
from vance_provider.hooks.vanceai import VanceAIHook

if TYPE_CHECKING:
    from airflow.sdk import Context


class VanceAIJobSensor(VanceAITaskMixin, BaseSensorOperator):
    """Succeed when every job has succeeded; fail as soon as one fails or is canceled.

    In deferrable mode the waiting happens in the triggerer
    (:class:`~vance_provider.triggers.vanceai.VanceAIJobTrigger`), polling from ``poke_interval``
    with a gentle back-off; ``timeout`` bounds the wait either way.

    :param job_ids: one id, a list, or a template such as
        ``"{{ ti.xcom_pull(task_ids='submit', key='job_id') }}"``.
    :param cancel_on_timeout: cancel unfinished jobs when the sensor times out (Open API only).
    """

    template_fields: Sequence[str] = ("job_ids",)

    def __init__(
        self,
        *,
        job_ids: str | list[str],
        vanceai_conn_id: str = VanceAIHook.default_conn_name,
        deferrable: bool | None = None,
        cancel_on_timeout: bool = False,
        max_poll_interval: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_ids = job_ids
        self.vanceai_conn_id = vanceai_conn_id
        self.deferrable = self.deferrable_or_default(deferrable)
        self.cancel_on_timeout = cancel_on_timeout
        self.max_poll_interval = max_poll_interval

    @cached_property
    def hook(self) -> VanceAIHook:
        return VanceAIHook(self.vanceai_conn_id, caller="airflow/VanceAIJobSensor")

    def poke(self, context: Context) -> bool:
        from vance_provider.core import JobStatus

        ids = parse_list(self.job_ids)
        if not ids:
            raise AirflowException("VanceAIJobSensor: no job ids given")
        jobs = [self.hook.client.get_job(j) for j in ids]
        for job in jobs:
            if job.status in (JobStatus.FAILED, JobStatus.CANCELED):
                raise AirflowException(
                    f"VanceAI job {job.id} {job.status.value}: {job.error_message or job.raw_status}"
                )
        waiting = [j.id for j in jobs if j.status is not JobStatus.SUCCEEDED]
        if waiting:
            self.log.info("VanceAI: %d of %d job(s) still running", len(waiting), len(jobs))
        return not waiting

    def execute(self, context: Context) -> Any:
        try:
            if not self.deferrable:
                try:
                    return super().execute(context)
                except AirflowSensorTimeout:
                    if self.cancel_on_timeout:
                        cancel_jobs(self.hook.client, parse_list(self.job_ids), self.log)
                    raise
            if self.poke(context):
                return None
        finally:
            self.hook.close()

        from vance_provider.triggers.vanceai import VanceAIJobTrigger

        end_time = ends_at(self.timeout)
        self.defer(
            trigger=VanceAIJobTrigger(
                self.vanceai_conn_id,
                parse_list(self.job_ids),
                poll_interval=self.poke_interval,
                max_poll_interval=self.max_poll_interval,
                end_time=end_time,
                resume_after=resume_after(),
            ),
            method_name="execute_complete",
            timeout=defer_timeout(end_time),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        status = event.get("status")
        if status == "success":
            self.log.info("%s", event.get("message"))
            return None
        if status == "timeout":
            if self.cancel_on_timeout:
                try:
                    cancel_jobs(self.hook.client, event.get("pending") or [], self.log)
                finally:
                    self.hook.close()
            raise AirflowSensorTimeout(f"VanceAIJobSensor: {event.get('message')}")
        raise AirflowException(f"VanceAIJobSensor: {event.get('message')}")
