"""``VanceAIEnhanceOperator``: a resumable, credit-aware batch, run in the worker or deferred.

The core, the trigger and the lineage helpers are imported when a task runs: a DAG file that
uses the operator parses without them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from vance_provider._common import (
    MAX_XCOM_ITEMS,
    defer_timeout,
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
    conf,
)
from vance_provider.object_storage import adopt_object_storage
from vance_provider.operators._base import VanceAIBaseOperator, deadline
from vance_provider.operators.links import LINK_XCOM_KEY, VanceAIDestinationLink, asset_uri, outputs_url

if TYPE_CHECKING:
    from airflow.sdk import Context

    from vance_provider.core import BatchResult, BatchSpec, VanceClient

FAILURE_POLICIES = ("continue", "fail", "fail_fast")


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


# --- a batch ---------------------------------------------------------------------------------------
class VanceAIEnhanceOperator(VanceAIBaseOperator):
    """Enhance every file of ``source`` into ``destination``: a resumable, credit-aware batch.

    The batch keeps a manifest beside its outputs (input -> job id -> state -> output), so a
    retried or cleared task - or the next scheduled run - resumes in-flight jobs and skips inputs
    already done: nothing is paid twice. The return value (XCom) is the batch summary: counts,
    credits spent by this run, the manifest URL and up to 50 output URLs.

    In deferrable mode the worker lists, checks and plans the batch, starts its jobs, and defers
    once: the triggerer (:class:`~vance_provider.triggers.vanceai.VanceAIBatchTrigger`) runs the
    rest of the sliding window of ``max_concurrency`` jobs from the manifest. A deferred task
    resumes no earlier than ``[vanceai] resume_after_deferral`` after the deferral, so the worker
    keeps the window while the rest of the batch looks shorter than that: a small batch finishes
    in the worker without deferring.

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

    To split one flat source instead, list it once with
    :class:`~vance_provider.operators.shards.VanceAIShardOperator` and map over its shard files
    (``.expand(shard_file=shards.output)``): each shard runs its share into the shared destination,
    with a manifest and a lease of its own.

    :param source: a URL, a prefix, a glob or a list of URLs (fsspec).
    :param shard_file: instead of ``source`` and ``destination``: a shard file written by
        :class:`~vance_provider.operators.shards.VanceAIShardOperator` (templated).
    :param destination: a prefix for the outputs (fsspec). When it is not templated it is declared as
        an Asset outlet; for a templated destination pass ``outlets=[AssetAlias("...")]`` and the
        task emits an event for the rendered destination. Events carry the batch counts as extra.
    :param tool: a friendly tool (``upscale``, ``denoise``, ...) or a vendor tool/module name.
    :param config: the tool's options, e.g. ``{"scale": 4}``.
    :param max_concurrency: jobs in flight at once (default: the connection's ``max_concurrency``).
    :param credit_budget: stop submitting once this many credits would be spent (templated: a
        number, or a template such as ``"{{ params.credit_budget }}"``; empty means no budget).
    :param account_budget: a named budget of the account (``vance budget set NAME CREDITS``),
        shared by every task and worker through the connection's account store: each job's credits
        are reserved in it before the job is created (templated).
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
        "shard_file",
        "destination",
        "tool",
        "config",
        "jconfig",
        "output_format",
        "storage_conn_id",
        "cache",
        "credit_budget",
        "account_budget",
    )
    template_fields_renderers = {"config": "json", "jconfig": "json"}
    operator_extra_links = (VanceAIDestinationLink(),)

    def __init__(
        self,
        *,
        source: str | list[str] | None = None,
        destination: str | None = None,
        tool: str,
        shard_file: str | None = None,
        config: dict[str, Any] | None = None,
        jconfig: dict[str, Any] | str | None = None,
        output_format: str | None = None,
        max_concurrency: int | None = None,
        credit_budget: float | None = None,
        account_budget: str | None = None,
        on_failure: str = "fail",
        on_insufficient_credits: str = "fail",
        force: bool = False,
        poll_interval: float = 2.0,  # the engine's defaults (BatchSpec): the vendor's guidance for images
        max_poll_interval: float = 15.0,
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
        if (source is None) == (shard_file is None):
            raise ValueError("give either source (with destination) or shard_file")
        if shard_file is None and destination is None:
            raise ValueError("destination is required with source")
        source, destination = adopt_object_storage(kwargs, source, destination)
        if "outlets" not in kwargs and isinstance(destination, str) and "{{" not in destination:
            kwargs["outlets"] = [Asset(uri=asset_uri(destination))]
        super().__init__(**kwargs)
        self.source, self.destination, self.tool = source, destination, tool
        self.shard_file = shard_file
        self.config, self.jconfig, self.output_format = config, jconfig, output_format
        self.max_concurrency, self.credit_budget = max_concurrency, credit_budget
        self.account_budget = account_budget
        self.on_failure, self.on_insufficient_credits, self.force = on_failure, on_insufficient_credits, force
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.timeout, self.cancel_on_timeout = timeout, cancel_on_timeout
        self.deferrable = self.deferrable_or_default(deferrable)
        self.fresh, self.lock_timeout = fresh, lock_timeout
        self.cache = cache

    def _engine_options(self, context: Context | None) -> dict[str, Any]:
        """``fresh``, ``lock_timeout`` and the run's ``owner`` for the batch spec."""
        options: dict[str, Any] = {"fresh": self.fresh, "lock_timeout": self.lock_timeout}
        ti = (context or {}).get("ti")
        if ti is not None:
            from vance_provider.core.state.lease import new_owner

            # Unique per attempt (try number, host, pid, a random part): a retry never re-enters the
            # lease of an earlier try that still runs; the trigger of this try gets it with the spec.
            try_number = getattr(ti, "try_number", None)
            options["owner"] = new_owner(
                "airflow", ti.dag_id, ti.task_id, ti.run_id, ti.map_index, f"try{try_number}"
            )
        return options

    def _take_shard(self) -> Any:
        """Read ``shard_file`` (if given): its inputs and destination become the operator's."""
        if not self.shard_file:
            return None
        from vance_provider.core.batch.shards import read_shard

        shard = read_shard(self.shard_file, self.hook.storage_options)
        if self.destination and self.destination.rstrip("/") != shard.destination.rstrip("/"):
            raise AirflowFailException(
                f"destination {self.destination} differs from the shard's {shard.destination}; "
                "leave destination out with shard_file"
            )
        self.source, self.destination = shard.sources, shard.destination
        return shard

    def spec(self, context: Context | None = None) -> BatchSpec:
        from vance_provider.core import BatchSpec
        from vance_provider.core.batch.shards import with_shard

        shard = self._take_shard()
        timeout = None if self.timeout is None else seconds(self.timeout)
        spec = BatchSpec(
            source=self.source,
            destination=self.destination,
            tool=self.tool,
            config=self.config,
            jconfig=self.jconfig,
            output_format=self.output_format,
            max_concurrency=self.max_concurrency or self.hook.settings["max_concurrency"],
            credit_budget=credit_budget(self.credit_budget),
            account_budget=self.account_budget or None,
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
        return spec if shard is None else with_shard(spec, shard)

    def execute(self, context: Context) -> Any:
        from vance_provider.core.api.errors import WaitTimeoutError

        with vance_errors():  # a storage connection that cannot be used fails the task at once
            spec = self.spec(context)
        self._push_link(context)
        with vance_errors(), self.hook.get_client() as client:
            self._api = client.api
            deferrable = self.deferrable and self._can_defer(client)
            self.log.info(
                "VanceAI batch: %s -> %s (%s, up to %d in flight, %s)",
                f"shard {self.shard_file} ({len(spec.source)} file(s))" if self.shard_file else self.source,
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
            end_time, reason = deadline(self, self.timeout, started)
            handed = self._start_deferrable(client, spec, end_time)
        if handed.result is not None:
            return self._finish(context, handed.result)
        self._defer_batch(spec, handed, started, end_time, reason)

    def _start_deferrable(self, client: VanceClient, spec: BatchSpec, end_time: float | None) -> Any:
        """The worker's part of a deferrable batch: prepare and check it once, then start its jobs.

        A deferred task resumes no earlier than its trigger's ``resume_after`` (the guard against
        Airflow's resume race), so the window runs here until the rest of the batch looks longer
        than that hold, and a batch that ends first is never deferred. With no hold (``[vanceai]
        resume_after_deferral = 0``) the first window of jobs is submitted and the task defers."""
        from vance_provider.core.api.errors import VanceError
        from vance_provider.core.batch.window import hand_off
        from vance_provider.operators._worker_window import WorkerWindow
        from vance_provider.triggers.vanceai import MAX_RESUME_HOLD

        hold = min(resume_after() - time.time(), MAX_RESUME_HOLD)
        if hold <= 0:
            try:
                return client.run(hand_off(client.aio, spec))
            except (VanceError, TimeoutError):
                raise  # it ended by itself: nothing of it runs on
            except BaseException:
                # Interrupted here (say, Airflow's execution_timeout): the task will not defer, so
                # nothing would wait for the jobs the hand-off started; they are canceled.
                self._cancel_in_flight(client, spec)
                raise
        window = WorkerWindow(client.aio, spec, hold=hold, end_time=end_time)
        handed = self._run_stoppable(client, window)
        if handed.result is not None:
            self.log.info(
                "VanceAI batch: finished in the worker in %.1fs, within the %.0fs a deferred task waits "
                "before it resumes: not deferred",
                window.elapsed,
                hold,
            )
        else:
            self.log.info(
                "VanceAI batch: %.1fs in the worker; the rest looks longer than the %.0fs a deferred "
                "task waits before it resumes: handing it to the triggerer",
                window.elapsed,
                hold,
            )
        return handed

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
        secret = ("storage_options", "cache_storage_options", "timeout", "fresh")
        # Live credentials (a storage_conn_id's session) are neither copied nor handed on.
        plain = dataclasses.replace(spec, storage_options=None, cache_storage_options=None)
        batch = {k: v for k, v in dataclasses.asdict(plain).items() if k not in secret}
        self.log.info(
            "VanceAI batch: %d job(s) in flight, %d to submit; deferring: the triggerer runs the rest",
            len(handed.job_ids),
            handed.pending,
        )
        from vance_provider.triggers.vanceai import VanceAIBatchTrigger

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
        from vance_provider.core.batch.cancel import StoppableBatch

        result: BatchResult = self._run_stoppable(client, StoppableBatch(client.aio, spec))
        return result

    def _run_stoppable(self, client: VanceClient, batch: Any) -> Any:
        """``batch.run()`` (a ``StoppableBatch`` or a ``WorkerWindow``) in this process; ``on_kill``
        (a kill, or ``execution_timeout``) stops it: its jobs in flight canceled and recorded."""
        from vance_provider.core.api.errors import VanceError

        self._batch = batch
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
        from vance_provider.core.batch.cancel import requeue_canceled
        from vance_provider.core.batch.runner import manifest_for

        async def requeue() -> list[str]:
            manifest = await asyncio.to_thread(manifest_for(spec).load)
            return await requeue_canceled(client.aio, manifest)

        client.run(requeue())

    def execute_complete(self, context: Context, event: dict[str, Any], reason: str | None = None) -> Any:
        """The triggerer ran the batch: apply the failure policy to its summary, or handle its end."""
        from vance_provider.core.batch.window import hand_off

        carry = event.get("carry") or {}
        end_time = carry.get("end_time")
        reason = reason or carry.get("reason")
        with vance_errors():
            spec = self.spec(context)
        with vance_errors(), self.hook.get_client() as client:
            self._api = client.api
            expired = reason == "execution_timeout" and end_time is not None and time.time() >= end_time
            if (event["status"] == "timeout" and reason == "execution_timeout") or expired:
                canceled = list(event.get("canceled") or []) + self._cancel_in_flight(client, spec)
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
        from vance_provider.core.batch.cancel import cancel_manifest_jobs
        from vance_provider.core.batch.runner import manifest_for

        async def cancel() -> list[str]:
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
        from vance_provider.core.reports.preview import PREVIEW_NAME, pairs_from_manifest, write_contact_sheet
        from vance_provider.core.state.storage import exists, join

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
