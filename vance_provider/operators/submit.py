"""``VanceAISubmitJobOperator``: one VanceAI job, waited for in the worker or in the triggerer.

The core, the trigger and the lineage helpers are imported when a task runs: a DAG file that
uses the operator parses without them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from vance_provider._common import cancel_jobs, defer_timeout, ends_at, resume_after, vance_errors
from vance_provider.airflow_compat import AirflowException, AirflowTaskTimeout, task_state_store
from vance_provider.object_storage import adopt_object_storage
from vance_provider.operators._base import VanceAIBaseOperator, deadline

if TYPE_CHECKING:
    from airflow.sdk import Context

    from vance_provider.core import Job, VanceClient

#: Airflow >= 3.3: the key under which the operator keeps its job id in the task state store.
JOB_STATE_KEY = "vanceai_job_id"


class VanceAISubmitJobOperator(VanceAIBaseOperator):
    """Submit one VanceAI job; optionally wait for it (in the worker or deferred) and download the result.

    The job id is pushed to XCom under ``job_id``. With ``wait_for_completion`` the return value
    is the job's small record (``Job.to_xcom()``), plus ``output`` when ``destination`` is given.

    A retry does not pay twice: the submission carries an idempotency key derived from the input's
    content and the tool call, so the service returns the job of the earlier try.

    :param source: an input file (any fsspec URL).
    :param tool: a friendly tool (``upscale``, ``denoise``, ...) or a vendor tool/module name.
    :param config: the tool's options, e.g. ``{"scale": 4}``.
    :param output_format: ``jpg``, ``png`` or ``webp`` (Open API).
    :param destination: where to store the result once the job succeeded (optional).
    :param wait_for_completion: wait until the job is terminal; else return the job id at once.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param timeout: seconds (or a timedelta) to wait for the job.
    :param cancel_on_timeout: cancel the job when the wait times out (Open API only).
    """

    template_fields: Sequence[str] = ("source", "tool", "config", "output_format", "destination")
    template_fields_renderers = {"config": "json"}

    def __init__(
        self,
        *,
        source: str,
        tool: str,
        config: dict[str, Any] | None = None,
        output_format: str | None = None,
        destination: str | None = None,
        wait_for_completion: bool = True,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        timeout: float | timedelta | None = None,
        cancel_on_timeout: bool = False,
        idempotency_key: str | None = None,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        source, destination = adopt_object_storage(kwargs, source, destination)
        super().__init__(**kwargs)
        self.source, self.tool, self.config = source, tool, config
        self.output_format, self.destination = output_format, destination
        self.wait_for_completion = wait_for_completion
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.timeout, self.cancel_on_timeout = timeout, cancel_on_timeout
        self.idempotency_key = idempotency_key
        self.deferrable = self.deferrable_or_default(deferrable)

    def execute(self, context: Context) -> Any:
        from vance_provider.core import JobStatus
        from vance_provider.core.api.errors import WaitTimeoutError

        started = time.time()
        end_time, reason = deadline(self, self.timeout, started)
        store = task_state_store(context)
        with vance_errors(), self.hook.get_client() as client:
            job = earlier = self._earlier_job(client, store)
            if job is None:
                job = client.submit(
                    self.source,
                    self.tool,
                    self.config,
                    output_format=self.output_format,
                    idempotency_key=self.idempotency_key,
                )
            if job.status in (JobStatus.FAILED, JobStatus.CANCELED) and self.idempotency_key is None:
                # The idempotency key found an earlier try's job, which failed: submit afresh.
                ti = context["ti"]
                key = f"af-{ti.dag_id}-{ti.task_id}-{ti.run_id}-{ti.map_index}-{ti.try_number}"
                self.log.info("the earlier job %s %s; submitting again", job.id, job.status.value)
                job = client.submit(
                    self.source, self.tool, self.config, output_format=self.output_format, idempotency_key=key
                )
            self._job_id = job.id
            if store is not None and job is not earlier:
                store.set(JOB_STATE_KEY, job.id)  # a retry of this task finds the job again
            if job is not earlier:
                self.log.info("VanceAI job %s submitted (%s, %s API)", job.id, job.tool, client.api)
            context["ti"].xcom_push(key="job_id", value=job.id)
            if not self.wait_for_completion:
                return job.id
            if job.status.terminal or not self.deferrable:
                try:  # (execution_timeout is Airflow's own here: it calls on_kill, which cancels)
                    own_end = ends_at(self.timeout, started)
                    remaining = None if own_end is None else max(0.0, own_end - time.time())
                    job = client.wait(
                        job.id, poll_interval=self.poll_interval, timeout=remaining, raise_on_failure=False
                    )
                except WaitTimeoutError as exc:
                    self._timed_out(client, [job.id])
                    raise AirflowException(f"VanceAI job {job.id} did not finish in time: {exc}") from None
                return self._finish(client, job)

        from vance_provider.triggers.vanceai import VanceAIJobTrigger

        self.defer(
            trigger=VanceAIJobTrigger(
                self.vanceai_conn_id,
                [job.id],
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                end_time=end_time,
                resume_after=resume_after(),
            ),
            method_name="execute_complete",
            kwargs={"reason": reason},
            timeout=defer_timeout(end_time),
        )

    # Not common-compat's ResumableJobMixin: it submits and waits in one worker call, while this
    # operator also reattaches to an earlier try's job before it defers to the triggerer.
    def _earlier_job(self, client: VanceClient, store: Any) -> Job | None:
        """Airflow >= 3.3: the job an earlier try of this task submitted, when it can still be used
        (running, or succeeded): a retry waits for it instead of submitting again. That matters most
        on the web API, which has no idempotency key; elsewhere the key finds the same job anyway."""
        from vance_provider.core import JobStatus
        from vance_provider.core.api.errors import VanceError

        job_id = store.get(JOB_STATE_KEY) if store is not None else None
        if not job_id:
            return None
        try:
            job = client.get_job(str(job_id))
        except VanceError as exc:  # expired, deleted, another key: submit afresh
            self.log.info("the earlier try's VanceAI job %s is gone (%s): submitting again", job_id, exc.code)
            return None
        if job.status in (JobStatus.FAILED, JobStatus.CANCELED):
            self.log.info("the earlier try's VanceAI job %s %s: submitting again", job.id, job.status.value)
            return None
        self.log.info("reattaching to VanceAI job %s from an earlier try (%s)", job.id, job.status.value)
        return job

    def execute_complete(self, context: Context, event: dict[str, Any], reason: str | None = None) -> Any:
        job_id = event["job_ids"][0]
        with vance_errors(), self.hook.get_client() as client:
            if event["status"] == "timeout" and reason == "execution_timeout":
                cancel_jobs(client, [job_id], self.log)  # the task is over: the job must not bill on
                raise AirflowTaskTimeout(f"execution_timeout reached while deferred: {event['message']}")
            if event["status"] == "timeout":
                self._timed_out(client, [job_id])
                raise AirflowException(event["message"])
            if event["status"] != "success":
                raise AirflowException(event["message"])
            return self._finish(client, client.get_job(job_id))

    def _timed_out(self, client: VanceClient, job_ids: list[str]) -> None:
        if self.cancel_on_timeout:
            cancel_jobs(client, job_ids, self.log)

    def on_kill(self) -> None:
        """Cancel the job when the task is killed while waiting in the worker (Open API only)."""
        job_id = getattr(self, "_job_id", None)
        if job_id and self.wait_for_completion:
            with self.hook.get_client() as client:
                cancel_jobs(client, [job_id], self.log)

    def _finish(self, client: VanceClient, job: Job) -> dict[str, Any]:
        from vance_provider.core import JobStatus

        if job.status is not JobStatus.SUCCEEDED:
            raise AirflowException(
                f"VanceAI job {job.id} {job.status.value}: {job.error_message or job.raw_status}"
            )
        record = job.to_xcom()
        if self.destination:
            record["output"] = client.download(job, self.destination)
            self.log.info("VanceAI job %s: result stored at %s", job.id, record["output"])
        self._lineage = {
            "inputs": [self.source],
            "outputs": [record["output"]] if record.get("output") else [],
            "facet": {
                "tool": job.tool or str(self.tool),
                "api": client.api,
                "total": 1,
                "done": 1,
                "credits_spent": float(job.credits_charged or 0.0),
            },
        }
        from vance_provider.operators._lineage import hook_lineage

        hook_lineage(self.hook, self._lineage["inputs"], self._lineage["outputs"])
        return record

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the input file, the stored result, and the ``vanceai`` run facet."""
        from vance_provider.operators._lineage import operator_lineage

        lineage = getattr(self, "_lineage", None) or {"inputs": [self.source], "outputs": [], "facet": None}
        return operator_lineage(lineage["inputs"], lineage["outputs"], lineage["facet"])

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """OpenLineage for a failed run: the same datasets and facet, as far as the job got."""
        return self.get_openlineage_facets_on_complete(task_instance)
