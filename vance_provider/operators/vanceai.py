"""Operators for VanceAI: one job, a resumable batch, a credit check and a usage report.

Every operator reads configuration and context, calls one verb of :mod:`vance_provider.core`
through :class:`~vance_provider.hooks.vanceai.VanceAIHook`, and returns small plain data for
XCom (counts, credits, a few output URLs - never a token). The core, pandas and the triggers
are imported only when a task runs, so DAG files that use these operators parse quickly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from vance_provider._common import (
    MAX_XCOM_ITEMS,
    VanceAITaskMixin,
    cancel_jobs,
    defer_timeout,
    ends_at,
    parse_list,
    resume_after,
    seconds,
    vance_errors,
)
from vance_provider.airflow_compat import (
    AirflowException,
    AirflowFailException,
    AirflowTaskTimeout,
    Asset,
    AssetAlias,
    BaseOperator,
    BaseOperatorLink,
    SkipMixin,
    task_state_store,
)
from vance_provider.hooks.vanceai import VanceAIHook, storage_options_from_connection
from vance_provider.object_storage import adopt_object_storage

if TYPE_CHECKING:
    from airflow.models.taskinstancekey import TaskInstanceKey
    from airflow.sdk import Context

    from vance_provider.core import BatchResult, BatchSpec, Job, VanceClient

FAILURE_POLICIES = ("continue", "fail", "fail_fast")
#: Airflow >= 3.3: the key under which the submit operator keeps its job id in the task state store.
JOB_STATE_KEY = "vanceai_job_id"


def asset_uri(destination: str) -> str:
    if "://" in destination:
        return destination
    import os

    return "file://" + os.path.abspath(destination)


def console_url(destination: str | None) -> str:
    """A browsable URL for a storage location, where one exists."""
    if not destination:
        return ""
    if destination.startswith(("http://", "https://")):
        return destination
    scheme, _, rest = destination.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme in ("s3", "s3a"):
        return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={prefix}"
    if scheme in ("gs", "gcs"):
        return f"https://console.cloud.google.com/storage/browser/{bucket}/{prefix}"
    return ""


def outputs_url(destination: str | None) -> str:
    """Where the extra link leads for a destination of any kind: the cloud console for S3 and GCS,
    a ``file://`` URL for a local folder, else the destination's own URL (without a query string
    or a password)."""
    if not destination:
        return ""
    url = console_url(destination)
    if url and not destination.startswith(("http://", "https://")):
        return url
    if "://" not in destination or destination.startswith("file://"):
        import os
        from pathlib import Path

        path = destination.removeprefix("file://")
        return Path(os.path.abspath(path)).as_uri() + ("/" if path.endswith("/") else "")
    from vance_provider.core.secrets import redact_url

    return redact_url(destination.split("?", 1)[0])


def credit_budget(value: Any) -> float | None:
    """A budget given as a number or rendered from a template (``"50"``); empty means none."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    try:
        budget = float(value)
    except (TypeError, ValueError):
        raise AirflowFailException(f"credit_budget must be a number, got {value!r}") from None
    if budget < 0:
        raise AirflowFailException(f"credit_budget must not be negative, got {budget:g}")
    return budget


LINK_XCOM_KEY = "vanceai_outputs_url"
SECRET_OPTION_WORDS = ("key", "secret", "token", "password", "credential", "session", "profile")


def shareable_storage_options(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """Storage options a trigger may carry (they are stored in the metadata DB): none with a secret."""
    if not options:
        return None

    def secret(key: str) -> bool:
        return any(w in key.lower() for w in SECRET_OPTION_WORDS)

    def walk(value: Any) -> bool:
        if isinstance(value, dict):
            return any(secret(str(k)) or walk(v) for k, v in value.items())
        return isinstance(value, list | tuple) and any(walk(v) for v in value)

    return None if walk(options) else dict(options)


class VanceAIDestinationLink(BaseOperatorLink):
    """'VanceAI outputs': the destination in the cloud console (S3 / GCS), a ``file://`` URL for a
    local folder, or the destination's own URL for other stores.

    The task pushes the link of its *rendered* destination to XCom when it starts, so a templated
    destination (``s3://out/{{ ds }}/``) links to the right place.
    """

    name = "VanceAI outputs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:  # type: ignore[override]
        try:
            from airflow.sdk.execution_time.xcom import XCom
        except ImportError:  # pragma: no cover - older layouts
            from airflow.models.xcom import XCom  # type: ignore[no-redef]
        try:
            url = XCom.get_value(ti_key=ti_key, key=LINK_XCOM_KEY)
        except Exception:  # no XCom backend reachable (say, in a unit test)
            url = None
        if url:
            return str(url)
        destination = getattr(operator, "destination", None)
        return "" if destination is None or "{{" in str(destination) else outputs_url(str(destination))


class _VanceAIBase(VanceAITaskMixin, BaseOperator):
    def __init__(
        self,
        *,
        vanceai_conn_id: str = VanceAIHook.default_conn_name,
        storage_options: dict[str, Any] | None = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vanceai_conn_id = vanceai_conn_id
        self.storage_options = storage_options
        self.storage_conn_id = storage_conn_id

    def resolved_storage_options(self) -> dict[str, Any] | None:
        """``storage_options`` merged over the options built from ``storage_conn_id`` (if any)."""
        from_conn = storage_options_from_connection(self.storage_conn_id or None)
        if from_conn is None and self.storage_options is None:
            return None
        return {**(from_conn or {}), **(self.storage_options or {})}

    @cached_property
    def hook(self) -> VanceAIHook:
        return VanceAIHook(
            self.vanceai_conn_id,
            storage_options=self.resolved_storage_options(),
            caller=f"airflow/{self.task_type}",
        )


def _deadline(op: BaseOperator, timeout: Any, started: float) -> tuple[float | None, str | None]:
    """The wait's deadline: the operator's ``timeout`` or the task's ``execution_timeout``, whichever
    comes first (Airflow does not count deferred time against ``execution_timeout``: we do), and
    which one it is."""
    own = ends_at(timeout, started)
    execution = ends_at(op.execution_timeout, started)
    if execution is not None and (own is None or execution <= own):
        return execution, "execution_timeout"
    return own, None if own is None else "timeout"


# --- one job ---------------------------------------------------------------------------------------
class VanceAISubmitJobOperator(_VanceAIBase):
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
        from vance_provider.core.errors import WaitTimeoutError

        started = time.time()
        end_time, reason = _deadline(self, self.timeout, started)
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
        from vance_provider.core.errors import VanceError

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


# --- a batch ---------------------------------------------------------------------------------------
class VanceAIEnhanceOperator(_VanceAIBase):
    """Enhance every file of ``source`` into ``destination``: a resumable, credit-aware batch.

    The batch keeps a manifest beside its outputs (input -> job id -> state -> output), so a
    retried or cleared task - or the next scheduled run - resumes in-flight jobs and skips inputs
    already done: nothing is paid twice. The return value (XCom) is the batch summary: counts,
    credits spent by this run, the manifest URL and up to 50 output URLs.

    In deferrable mode the worker only submits and collects; the waiting happens in the
    triggerer (:class:`~vance_provider.triggers.vanceai.VanceAIBatchTrigger`). At most
    ``max_concurrency`` jobs are in flight: the task submits a wave, defers until the wave is
    done, then stores its results and submits the next wave.

    Marking the task failed or clearing it while it is deferred cancels its jobs in flight (Open
    API; web API jobs cannot be canceled and cost nothing until downloaded) and leaves their
    items pending for the next run: Airflow 3.3 calls the trigger's ``on_kill``;
    on 3.0-3.2 the cancelled trigger reads its task's state and cancels when the task is no
    longer deferred, also while it holds its event for the resume. A triggerer restart or
    rebalance cancels nothing.

    To bound the account's concurrency across tasks and DAGs, put every VanceAI task in one pool
    (``pool="vanceai", pool_slots=max_concurrency``, pool size = the account's job limit, with
    ``include_deferred`` on). To scale out, map over shards - each with its own destination,
    since a manifest belongs to one destination::

        VanceAIEnhanceOperator.partial(task_id="enhance", tool="upscale", config={"scale": 2},
                                       destination="s3://out/{{ ti.map_index }}/", pool="vanceai"
                                       ).expand(source=["s3://in/a/", "s3://in/b/"])

    :param source: a URL, a prefix, a glob or a list of URLs (fsspec).
    :param destination: a prefix for the outputs (fsspec). When it is not templated it is declared as
        an Asset outlet; for a templated destination pass ``outlets=[AssetAlias("...")]`` and the
        task emits an event for the rendered destination. Events carry the batch counts as extra.
    :param tool: a friendly tool (``upscale``, ``denoise``, ...) or a vendor tool/module name.
    :param config: the tool's options, e.g. ``{"scale": 4}``.
    :param max_concurrency: jobs in flight at once (default: the connection's ``max_concurrency``).
    :param credit_budget: stop submitting once this many credits would be spent (templated: a
        number, or a template such as ``"{{ params.credit_budget }}"``; empty means no budget).
    :param on_failure: ``fail`` (default), ``fail_fast`` (stop submitting at the first failure) or
        ``continue`` (succeed and report failures in the summary).
    :param on_insufficient_credits: ``fail`` before spending anything, or ``partial``.
    :param timeout: seconds (or a timedelta) for the whole batch.
    :param cancel_on_timeout: on timeout, cancel the jobs in flight (Open API) so a retry submits afresh.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param storage_conn_id: a connection with S3 credentials (login/password, extras
        ``endpoint_url``/``region_name``); without it, s3fs reads the environment.
    :param cache: a result cache (fsspec URL, e.g. ``s3://bucket/vance-cache/``; templated): an
        input whose result is already there (same bytes, API, tool and config) is copied for 0
        credits instead of paid again; the summary counts ``cached`` and ``credits_saved``. It uses
        the batch's storage options.
    """

    template_fields: Sequence[str] = (
        "source",
        "destination",
        "tool",
        "config",
        "jconfig",
        "output_format",
        "storage_conn_id",
        "cache",
        "credit_budget",
    )
    template_fields_renderers = {"config": "json", "jconfig": "json"}
    operator_extra_links = (VanceAIDestinationLink(),)

    def __init__(
        self,
        *,
        source: str | list[str],
        destination: str,
        tool: str,
        config: dict[str, Any] | None = None,
        jconfig: dict[str, Any] | str | None = None,
        output_format: str | None = None,
        max_concurrency: int | None = None,
        credit_budget: float | None = None,
        on_failure: str = "fail",
        on_insufficient_credits: str = "fail",
        force: bool = False,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        timeout: float | timedelta | None = None,
        cancel_on_timeout: bool = False,
        deferrable: bool | None = None,
        fresh: bool = False,
        lock_timeout: float = 0.0,
        cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        if on_failure not in FAILURE_POLICIES:
            raise ValueError(f"on_failure must be one of {FAILURE_POLICIES}, got {on_failure!r}")
        if on_insufficient_credits not in ("fail", "partial"):
            raise ValueError(
                f"on_insufficient_credits must be 'fail' or 'partial', got {on_insufficient_credits!r}"
            )
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        source, destination = adopt_object_storage(kwargs, source, destination)
        if "outlets" not in kwargs and isinstance(destination, str) and "{{" not in destination:
            kwargs["outlets"] = [Asset(uri=asset_uri(destination))]
        super().__init__(**kwargs)
        self.source, self.destination, self.tool = source, destination, tool
        self.config, self.jconfig, self.output_format = config, jconfig, output_format
        self.max_concurrency, self.credit_budget = max_concurrency, credit_budget
        self.on_failure, self.on_insufficient_credits, self.force = on_failure, on_insufficient_credits, force
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.timeout, self.cancel_on_timeout = timeout, cancel_on_timeout
        self.deferrable = self.deferrable_or_default(deferrable)
        self.fresh, self.lock_timeout = fresh, lock_timeout
        self.cache = cache

    def _engine_options(self, context: Context | None) -> dict[str, Any]:
        """``fresh``, ``lock_timeout`` and the run's ``owner``, for the core versions that have them."""
        import dataclasses

        from vance_provider.core import BatchSpec

        names = {f.name for f in dataclasses.fields(BatchSpec)}
        options: dict[str, Any] = {"fresh": self.fresh, "lock_timeout": self.lock_timeout}
        ti = (context or {}).get("ti")
        if ti is not None:
            from vance_provider.core.lease import new_owner

            # Unique per attempt (try number, host, pid, a random part): a retry never re-enters the
            # lease of an earlier try that still runs; the trigger of this try gets it with the spec.
            try_number = getattr(ti, "try_number", None)
            options["owner"] = new_owner(
                "airflow", ti.dag_id, ti.task_id, ti.run_id, ti.map_index, f"try{try_number}"
            )
        wanted = {k: v for k, v in options.items() if k in names}
        if (self.fresh or self.lock_timeout) and not {"fresh", "lock_timeout"} <= names:
            raise AirflowFailException("fresh and lock_timeout need a newer vance_provider.core")
        return wanted

    def spec(self, context: Context | None = None) -> BatchSpec:
        from vance_provider.core import BatchSpec

        timeout = None if self.timeout is None else seconds(self.timeout)
        return BatchSpec(
            source=self.source,
            destination=self.destination,
            tool=self.tool,
            config=self.config,
            jconfig=self.jconfig,
            output_format=self.output_format,
            max_concurrency=self.max_concurrency or self.hook.settings["max_concurrency"],
            credit_budget=credit_budget(self.credit_budget),
            poll_interval=self.poll_interval,
            max_poll_interval=self.max_poll_interval,
            on_failure=self.on_failure,  # type: ignore[arg-type]
            on_insufficient_credits=self.on_insufficient_credits,  # type: ignore[arg-type]
            force=self.force,
            timeout=None if self.deferrable else timeout,
            storage_options=self.hook.storage_options,
            cache=self.cache or None,
            **self._engine_options(context),
        )

    def execute(self, context: Context) -> Any:
        import dataclasses

        from vance_provider.core.errors import WaitTimeoutError
        from vance_provider.core.window import hand_off

        with vance_errors():  # a storage connection that cannot be used fails the task at once
            spec = self.spec(context)
        self._push_link(context)
        with vance_errors(), self.hook.get_client() as client:
            self._api = client.api
            deferrable = self.deferrable and self._can_defer(client)
            self.log.info(
                "VanceAI batch: %s -> %s (%s, up to %d in flight, %s)",
                self.source,
                self.destination,
                self.tool,
                spec.max_concurrency,
                "deferrable: the window runs in the triggerer" if deferrable else "in the worker",
            )
            if not deferrable:
                if spec.timeout is None and self.timeout is not None:  # a deferrable task run here
                    spec = dataclasses.replace(spec, timeout=seconds(self.timeout))
                try:
                    result = self._run_in_worker(client, spec)
                except (TimeoutError, WaitTimeoutError):
                    self._timed_out(client, spec)
                    raise AirflowException(
                        f"VanceAI batch did not finish within {spec.timeout:g}s; a retry "
                        "resumes from the manifest"
                    ) from None
                return self._finish(context, result)
            started = time.time()
            self._requeue_canceled(client, spec)
            # Prepared and checked once here; the first window of jobs starts before the deferral.
            handed = client.run(hand_off(client.aio, spec))
        if handed.result is not None:
            return self._finish(context, handed.result)
        end_time, reason = _deadline(self, self.timeout, started)
        self._defer_batch(spec, handed, started, end_time, reason)

    def _can_defer(self, client: VanceClient) -> bool:
        """Whether the triggerer can run this batch: the backend's results must be collectable
        from another process, and the storage reachable without a secret in the trigger."""
        if not client.capabilities.collectable_elsewhere:
            self.log.warning(
                "VanceAI batch: the %s API keeps results in the process that submitted the jobs, so "
                "the triggerer could not collect them: running the batch in the worker, not deferred",
                client.api,
            )
            return False
        if self.storage_options and shareable_storage_options(self.storage_options) is None:
            self.log.warning(
                "VanceAI batch: storage_options hold a secret, which must not travel to the triggerer "
                "(use storage_conn_id): running the batch in the worker, not deferred"
            )
            return False
        return True

    def _defer_batch(
        self, spec: BatchSpec, handed: Any, started: float, end_time: float | None, reason: str | None
    ) -> None:
        """Hand the batch's window to the triggerer: the spec as plain data, no token, no secret."""
        import dataclasses

        from vance_provider.triggers.vanceai import VanceAIBatchTrigger

        secret = ("storage_options", "cache_storage_options", "timeout", "fresh")
        # Live credentials (a storage_conn_id's session) are neither copied nor handed on.
        plain = dataclasses.replace(spec, storage_options=None, cache_storage_options=None)
        batch = {k: v for k, v in dataclasses.asdict(plain).items() if k not in secret}
        self.log.info(
            "VanceAI batch: %d job(s) in flight, %d to submit; deferring: the triggerer runs the rest",
            len(handed.job_ids),
            handed.pending,
        )
        self.defer(
            trigger=VanceAIBatchTrigger(
                self.vanceai_conn_id,
                handed.job_ids,
                batch=batch,
                manifest=handed.manifest,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                end_time=end_time,
                carry={"started": started, "end_time": end_time, "reason": reason},
                storage_conn_id=self.storage_conn_id or None,
                storage_options=shareable_storage_options(self.storage_options),
                resume_after=resume_after(),
            ),
            method_name="execute_complete",
            kwargs={"reason": reason},
            timeout=defer_timeout(end_time),
        )

    def _run_in_worker(self, client: VanceClient, spec: BatchSpec) -> BatchResult:
        """The whole batch in this process; ``on_kill`` (a kill, or ``execution_timeout``) stops it."""
        import concurrent.futures

        from vance_provider.core.cancel import StoppableBatch
        from vance_provider.core.errors import VanceError

        self._batch = batch = StoppableBatch(client.aio, spec)
        try:
            return client.run(batch.run())
        except BaseException as exc:
            if isinstance(exc, (VanceError, TimeoutError)):
                raise  # the batch ended by itself (its own timeout, a configuration error, ...)
            stopped = batch.stopped
            if not stopped:  # interrupted here (say, Airflow's execution_timeout): stop it now
                self._stop_batch(f"the task was interrupted ({type(exc).__name__})")
            if isinstance(exc, concurrent.futures.CancelledError) or stopped:
                raise AirflowException(
                    f"VanceAI batch stopped: {len(batch.canceled)} job(s) in flight canceled and "
                    "recorded in the manifest; the next run submits only those again"
                ) from None
            raise

    def _stop_batch(self, reason: str) -> list[str]:
        batch = getattr(self, "_batch", None)
        if batch is None or batch.stopped:
            return [] if batch is None else batch.canceled
        canceled = batch.stop_threadsafe(reason)
        self.log.info(
            "VanceAI batch stopped (%s): canceled %d job(s) in flight; the next run submits them again",
            reason,
            len(canceled),
        )
        return canceled

    def on_kill(self) -> None:
        """The task is killed (or hit ``execution_timeout``) in the worker: stop submitting, cancel
        the jobs in flight (Open API) and record them in the manifest."""
        self._stop_batch("the task was killed")

    def _requeue_canceled(self, client: VanceClient, spec: BatchSpec) -> None:
        """Jobs canceled since the last run (by a trigger's on_kill) are submitted again."""
        from vance_provider.core.batch import manifest_for
        from vance_provider.core.cancel import requeue_canceled

        async def requeue() -> list[str]:
            import asyncio

            manifest = await asyncio.to_thread(manifest_for(spec).load)
            return await requeue_canceled(client.aio, manifest)

        client.run(requeue())

    def execute_complete(self, context: Context, event: dict[str, Any], reason: str | None = None) -> Any:
        """The triggerer ran the batch: apply the failure policy to its summary, or handle its end."""
        import dataclasses

        from vance_provider.core.window import hand_off

        carry = event.get("carry") or {}
        end_time = carry.get("end_time")
        reason = reason or carry.get("reason")
        with vance_errors():
            spec = self.spec(context)
        with vance_errors(), self.hook.get_client() as client:
            self._api = client.api
            expired = reason == "execution_timeout" and end_time is not None and time.time() >= end_time
            if (event["status"] == "timeout" and reason == "execution_timeout") or expired:
                canceled = self._cancel_in_flight(client, spec)
                raise AirflowTaskTimeout(
                    f"execution_timeout reached while deferred: canceled {len(canceled)} VanceAI job(s) "
                    f"in flight; the next run submits only those again (manifest: {event.get('manifest')})"
                )
            if event["status"] == "timeout":
                self._timed_out(client, spec)
                raise AirflowException(
                    f"VanceAI batch timed out: {event['message']} (manifest: {event.get('manifest')})"
                )
            if event["status"] != "success":
                raise AirflowException(f"VanceAI batch: {event['message']}")
            self.log.info("VanceAI batch: %s", event["message"])
            if "summary" not in event:  # a trigger of an older version waited for one wave only
                handed = client.run(hand_off(client.aio, dataclasses.replace(spec, fresh=False)))
                if handed.result is None:
                    started = float(carry.get("started") or time.time())
                    self._defer_batch(spec, handed, started, end_time, reason)  # raises TaskDeferred
                assert handed.result is not None
                return self._finish(context, handed.result)
        summary = dict(event["summary"])
        if carry.get("started"):
            summary["elapsed_s"] = round(time.time() - float(carry["started"]), 2)
        return self._conclude(context, summary)

    def _emit_asset_events(self, context: Context, summary: dict[str, Any]) -> None:
        """The counts as the extra of the outlet Asset's event; an ``AssetAlias`` outlet gets an event
        for the rendered destination (use one when the destination is templated)."""
        extra = {k: summary[k] for k in ("total", "done", "failed", "skipped", "credits_spent", "manifest")}
        for outlet in self.outlets or []:
            try:
                if isinstance(outlet, Asset):
                    context["outlet_events"][outlet].extra.update(extra)
                elif isinstance(outlet, AssetAlias):
                    context["outlet_events"][outlet].add(Asset(uri=asset_uri(self.destination)), extra=extra)
            except (KeyError, TypeError, AttributeError) as exc:  # no outlet events (e.g. a bare context)
                self.log.debug("no asset event for %s: %s", outlet, exc)

    def _record_lineage(self, summary: dict[str, Any]) -> None:
        from vance_provider.operators._lineage import hook_lineage, prefixes

        self._lineage = {
            "inputs": prefixes(self.source),
            "outputs": [self.destination],
            "facet": {
                "tool": str(self.tool),
                "api": getattr(self, "_api", None) or self.hook.settings["api"],
                **{k: summary[k] for k in ("total", "done", "failed", "skipped", "credits_spent")},
            },
        }
        hook_lineage(self.hook, self._lineage["inputs"], self._lineage["outputs"])

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: one input dataset per source prefix, the destination prefix as output, and
        the ``vanceai`` run facet (tool, API, items done/failed, credits spent)."""
        from vance_provider.operators._lineage import operator_lineage, prefixes

        lineage = getattr(self, "_lineage", None) or {
            "inputs": prefixes(self.source),
            "outputs": [self.destination],
            "facet": None,
        }
        return operator_lineage(lineage["inputs"], lineage["outputs"], lineage["facet"])

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """OpenLineage for a failed run: the same datasets, and the facet's counts of what failed."""
        return self.get_openlineage_facets_on_complete(task_instance)

    def _timed_out(self, client: VanceClient, spec: BatchSpec) -> None:
        if not self.cancel_on_timeout:
            return
        if not client.capabilities.can_cancel:
            self.log.warning("the VanceAI %s API cannot cancel jobs; a retry resumes them", client.api)
            return
        canceled = self._cancel_in_flight(client, spec)
        self.log.info("canceled %d VanceAI job(s); a retry submits them afresh", len(canceled))

    def _cancel_in_flight(self, client: VanceClient, spec: BatchSpec) -> list[str]:
        """Cancel the batch's submitted jobs and mark them pending in the manifest (Open API)."""
        from vance_provider.core.batch import manifest_for
        from vance_provider.core.cancel import cancel_manifest_jobs

        async def cancel() -> list[str]:
            import asyncio

            manifest = await asyncio.to_thread(manifest_for(spec).load)
            return await cancel_manifest_jobs(client.aio, manifest)

        return client.run(cancel())

    def _push_link(self, context: Context) -> None:
        """The rendered destination's link (any kind of destination), for the operator extra link."""
        url = outputs_url(self.destination)
        ti = context.get("ti") if hasattr(context, "get") else None
        if url and ti is not None:
            ti.xcom_push(key=LINK_XCOM_KEY, value=url)

    def _finish(self, context: Context, result: BatchResult) -> dict[str, Any]:
        return self._conclude(context, result.summary(max_outputs=MAX_XCOM_ITEMS))

    def _preview(self, summary: dict[str, Any]) -> str | None:
        """A before/after contact sheet of the first outputs, written beside them
        (``_vance_preview/_vance_contact_sheet.jpg``); its URL for the return value.
        ``[vanceai] preview = False`` turns it off (private data); it is kept as it is when this
        run enhanced nothing."""
        from vance_provider.airflow_compat import conf
        from vance_provider.core.preview import PREVIEW_NAME, pairs_from_manifest, write_contact_sheet
        from vance_provider.core.storage import exists, join

        if not conf.getboolean("vanceai", "preview", fallback=True) or not summary.get("done"):
            return None
        options = self.hook.storage_options
        try:
            existing = join(self.destination, PREVIEW_NAME)
            if not summary.get("credits_spent") and not summary.get("cached") and exists(existing, options):
                return existing
            pairs = pairs_from_manifest(summary["manifest"], options)
            return write_contact_sheet(pairs, self.destination, options)
        except Exception as exc:  # a preview never fails the batch
            self.log.warning("VanceAI batch: no preview written (%s)", type(exc).__name__)
            return None

    def _conclude(self, context: Context, summary: dict[str, Any]) -> dict[str, Any]:
        """Log the counts, emit the asset event and lineage, apply ``on_failure``; the XCom."""
        self.log.info(
            "VanceAI batch: %d done, %d failed, %d skipped of %d; %g credits spent; manifest %s",
            summary["done"],
            summary["failed"],
            summary["skipped"],
            summary["total"],
            summary["credits_spent"],
            summary["manifest"],
        )
        summary["preview"] = self._preview(summary)
        self._emit_asset_events(context, summary)
        self._record_lineage(summary)
        if self.on_failure != "continue" and summary["failed"]:
            context["ti"].xcom_push(key="summary", value=summary)
            source, error = next(iter((summary.get("failures") or {}).items()), ("?", "?"))
            raise AirflowException(
                f"{summary['failed']} of {summary['total']} item(s) failed; first: {source}: {error}"
            )
        return summary


# --- credits -----------------------------------------------------------------------------------------
class VanceAICreditCheckOperator(_VanceAIBase, SkipMixin):
    """Check the balance covers a batch before it starts; fail, or skip everything downstream.

    The need is ``min_credits`` when given, else the number of inputs under ``source`` times the
    tool's per-job estimate (inputs already done in ``destination``'s manifest are not counted).
    Costs no credits.

    :param on_insufficient: ``fail`` (default) or ``skip`` (short-circuit: downstream tasks are skipped).
    :param margin: extra credits to keep in reserve.
    """

    template_fields: Sequence[str] = (
        "source",
        "destination",
        "tool",
        "config",
        "min_credits",
        "storage_conn_id",
    )
    template_fields_renderers = {"config": "json"}

    def __init__(
        self,
        *,
        source: str | list[str] | None = None,
        tool: str | None = None,
        config: dict[str, Any] | None = None,
        destination: str | None = None,
        min_credits: float | None = None,
        margin: float = 0.0,
        on_insufficient: str = "fail",
        **kwargs: Any,
    ) -> None:
        if on_insufficient not in ("fail", "skip"):
            raise ValueError(f"on_insufficient must be 'fail' or 'skip', got {on_insufficient!r}")
        if min_credits is None and (source is None or tool is None):
            raise ValueError("give min_credits, or source and tool to estimate from")
        source, destination = adopt_object_storage(kwargs, source, destination)
        super().__init__(**kwargs)
        self.source, self.tool, self.config, self.destination = source, tool, config, destination
        self.min_credits, self.margin, self.on_insufficient = min_credits, margin, on_insufficient

    def _estimate(self, client: VanceClient) -> tuple[float, int | None]:
        if self.min_credits is not None and self.min_credits != "":
            return float(self.min_credits), None
        from vance_provider.core.manifest import ItemState, Manifest
        from vance_provider.core.storage import list_sources

        if self.source is None or self.tool is None:
            raise AirflowFailException("give min_credits, or source and tool to estimate from")
        so = self.hook.storage_options
        sources = list_sources(self.source, None, so)
        done: set[tuple[str, str]] = set()
        if self.destination:
            manifest = Manifest.for_destination(self.destination, so).load()
            done = {(i.source, i.fingerprint) for i in manifest.items.values() if i.state == ItemState.DONE}
        todo = [s for s in sources if (s.url, s.fingerprint) not in done]
        per_job = client.tool_call(self.tool, self.config).estimate()
        return len(todo) * per_job, len(todo)

    def execute(self, context: Context) -> dict[str, Any]:
        with vance_errors(), self.hook.get_client() as client:
            need, inputs = self._estimate(client)
            balance = client.balance()
            api = client.api
        need_total = need + self.margin
        info = {
            "api": api,
            "available": balance.available,
            "needed": need_total,
            "inputs": inputs,
            "ok": balance.available + 1e-9 >= need_total,
        }
        self.log.info(
            "VanceAI credits: %g available, %g needed%s",
            balance.available,
            need_total,
            f" for {inputs} input(s)" if inputs is not None else "",
        )
        if info["ok"]:
            return info
        message = f"VanceAI balance {balance.available:g} is below the {need_total:g} credits needed"
        if self.on_insufficient == "fail":
            raise AirflowFailException(message + " (top up, or shrink the batch)")
        self.log.warning("%s: skipping downstream tasks", message)
        to_skip = [t for t in context["task"].get_flat_relatives(upstream=False) if not t.is_teardown]
        if to_skip:
            self.skip(ti=context["ti"], tasks=to_skip)
        return info


def _utc(value: Any) -> Any:
    import pandas as pd

    ts = pd.Timestamp(str(value))
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


class VanceAICreditReportOperator(_VanceAIBase):
    """Write the account's credit usage to CSV or Parquet (by the URL's extension) on any fsspec URL.

    The web API reports the full history; the Open API keeps none, so pass the ``manifests`` of
    past batches (their recorded charges are used). ``start``/``end`` (ISO dates or datetimes,
    templated - e.g. ``{{ data_interval_start }}``) narrow the report. Returns the totals.
    """

    template_fields: Sequence[str] = ("destination", "manifests", "start", "end", "storage_conn_id")

    def __init__(
        self,
        *,
        destination: str,
        manifests: list[str] | str | None = None,
        start: Any = None,
        end: Any = None,
        **kwargs: Any,
    ) -> None:
        if not str(destination).endswith((".csv", ".parquet")) and "{{" not in str(destination):
            raise ValueError(f"destination {destination!r} must end in .csv or .parquet")
        super().__init__(**kwargs)
        self.destination, self.manifests, self.start, self.end = destination, manifests, start, end

    def execute(self, context: Context) -> dict[str, Any]:
        from vance_provider.core.credits import summary_text, totals, usage_summary, write_report

        manifests = parse_list(self.manifests)
        so = self.hook.storage_options
        with vance_errors(), self.hook.get_client() as client:
            df = client.usage_report(manifests, so)
            api = client.api
        if self.start:
            df = df[df["timestamp"] >= _utc(self.start)]
        if self.end:
            df = df[df["timestamp"] < _utc(self.end)]
        url = write_report(df.reset_index(drop=True), self.destination, so)
        table = usage_summary(df)  # per API and tool, as `vance report` and the Dagster asset make it
        summary = {"url": url, "api": api, "rows": len(df), **totals(df), "summary": table.to_dict("records")}
        self.log.info(
            "VanceAI usage report: %d charge(s), %g credits -> %s\n%s",
            len(df),
            summary["total"],
            url,
            summary_text(table),
        )
        return summary
