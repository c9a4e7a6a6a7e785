"""Triggers for VanceAI in the triggerer, without holding a worker slot.

* :class:`VanceAIJobTrigger` waits for jobs (it only polls, submitting nothing);
* :class:`VanceAIBatchTrigger` runs a batch's sliding window (submit, poll, download, record),
  with the batch manifest as its durable state.

A triggerer restart rebuilds them from ``serialize()`` (connection id, job ids or the batch's
plain settings, poll interval, deadline - never a token, never a storage secret) and they carry
on: the batch trigger resumes from the manifest and pays nothing twice. Each yields exactly one
``TriggerEvent`` and returns:

    {"status": "success" | "error" | "timeout", "message": str, ...}

When a user marks the deferred task failed or succeeded, or clears it, the trigger cancels its
Open API jobs (they would run and bill for nothing) and, for a batch, records them in the
manifest so the next run submits exactly those again. Airflow 3.3 tells the trigger through
``BaseTrigger.on_kill``; on 3.0 to 3.2 the trigger, when cancelled, asks for its task's state
and cancels only if the task is no longer deferred (a triggerer restart or rebalance leaves the
task deferred: the jobs keep running for the next triggerer). A trigger timeout cancels nothing
here: the operator resumes, and cancels or not by its own settings.

An event never comes before ``resume_after`` (set by the operator when it defers: see
:func:`vance_provider._common.resume_after`): Airflow up to 3.3.2 fails a task that resumes
before the scheduler has seen the exit of the worker that deferred it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from vance_provider.airflow_compat import TRIGGER_ON_KILL, BaseTrigger, TriggerEvent
from vance_provider.triggerer_calls import call_in_thread, to_the_end

if TYPE_CHECKING:
    from vance_provider.core import AsyncVanceClient, Job

MAX_REPORTED_JOBS = 50  # keep events (stored in the metadata DB) small
MAX_RESUME_HOLD = 60.0  # seconds an event is held back for resume_after, at most


def safe_message(exc: BaseException) -> str:
    """An error message for an event or a log line: our own errors' text, scrubbed of any token."""
    from vance_provider.core.api.errors import VanceError
    from vance_provider.core.secrets import redact

    if isinstance(exc, VanceError):
        return redact(f"{type(exc).__name__}: {exc}")
    return f"{type(exc).__name__} while polling VanceAI"


async def wait_until(when: float) -> None:
    """Sleep until ``when`` (epoch seconds)."""
    await asyncio.sleep(max(0.0, when - time.time()))


class _VanceAITrigger(BaseTrigger):
    stop_on_failure = False

    def __init__(
        self,
        conn_id: str,
        job_ids: list[str] | str,
        *,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        end_time: float | None = None,
        cancel_on_kill: bool = True,
        resume_after: float | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.job_ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self.end_time = None if end_time is None else float(end_time)
        self.cancel_on_kill = bool(cancel_on_kill)
        self.resume_after = None if resume_after is None else float(resume_after)
        self.killed: list[str] | None = None  # the job ids canceled by on_kill, once it ran
        self._vance_hook: Any = None  # see _hook()

    def _kwargs(self) -> dict[str, Any]:
        return {
            "conn_id": self.conn_id,
            "job_ids": list(self.job_ids),
            "poll_interval": self.poll_interval,
            "max_poll_interval": self.max_poll_interval,
            "end_time": self.end_time,
            "cancel_on_kill": self.cancel_on_kill,
            "resume_after": self.resume_after,
        }

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", self._kwargs()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conn_id={self.conn_id!r}, jobs={len(self.job_ids)})"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            payload = await self._payload()
            await self._hold_until_resume()
        except asyncio.CancelledError:
            # Airflow < 3.3 has no on_kill for triggers: find out whether a user stopped the task.
            # A stop during the resume hold counts too: a timed-out batch still has jobs in flight.
            # The triggerer repeats its cancel while this runs: it must not cut the cancels short.
            if not TRIGGER_ON_KILL and self.cancel_on_kill:
                await to_the_end(self._cancel_jobs_if_task_stopped())
            raise
        yield TriggerEvent(payload)

    async def _payload(self) -> dict[str, Any]:
        try:
            async with self._hook().async_client() as client:
                return await self.work(client)
        except Exception as exc:
            return self.error_payload(exc)

    def _hook(self) -> Any:
        """One hook for the trigger's life: the connection it reads in ``run()`` serves the cancels
        of ``on_kill`` too. A stop must not wait on the API server for it again: under load a call
        to it has taken 35 s, and the triggerer gives ``on_kill`` 30 ([triggerer] on_kill_timeout)."""
        from vance_provider.hooks.vanceai import VanceAIHook

        if self._vance_hook is None:
            self._vance_hook = VanceAIHook(self.conn_id, caller="airflow-triggerer")
        return self._vance_hook

    async def _hold_until_resume(self) -> None:
        if self.resume_after is None or self.resume_after <= time.time():
            return
        self.log.info(
            "VanceAI: done; the task resumes at %s, once the scheduler has seen the worker that "
            "handed it over exit ([vanceai] resume_after_deferral)",
            time.strftime("%H:%M:%S", time.localtime(self.resume_after)),
        )
        # At most a minute: a worker whose clock runs ahead must not hold the task for long.
        await wait_until(min(self.resume_after, time.time() + MAX_RESUME_HOLD))

    async def work(self, client: AsyncVanceClient) -> dict[str, Any]:
        """Wait for the jobs; the event's payload."""
        from vance_provider.core.batch.polling import poll_jobs

        result = await poll_jobs(
            client.get_job,
            self.job_ids,
            interval=self.poll_interval,
            max_interval=self.max_poll_interval,
            deadline=self.end_time,
            stop_on_failure=self.stop_on_failure,
            log=self.log,
        )
        return self.event_payload(result.done, result.pending, client.api)

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        return {"status": "error", "message": safe_message(exc), "job_ids": self.job_ids}

    async def _cancel_jobs_if_task_stopped(self) -> None:
        if await self._task_was_stopped():
            await self.on_kill()

    async def _task_was_stopped(self) -> bool:
        """Airflow < 3.3: the task is no longer deferred (marked failed/succeeded, cleared)."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return False
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            states = await call_in_thread(
                RuntimeTaskInstance.get_task_states,
                dag_id=ti.dag_id,
                task_ids=[ti.task_id],
                run_ids=[ti.run_id],
                map_index=ti.map_index,
            )
            state = next(iter(states.get(ti.run_id, {}).values()), None)
        except Exception as exc:  # unknown: leave the jobs running, the next run collects them
            self.log.warning("could not read the task's state (%s): VanceAI jobs left running", exc)
            return False
        return state is not None and str(state) != "deferred"

    async def on_kill(self) -> None:
        """The task was stopped by a user while deferred: cancel the jobs (Open API)."""
        if not self.cancel_on_kill or self.killed is not None:
            return
        from vance_provider.core.batch.cancel import cancel_jobs

        self.killed = []
        try:
            async with self._hook().async_client() as client:
                if not client.capabilities.can_cancel:
                    self.log.warning(
                        "the VanceAI %s API cannot cancel jobs: %d left running (not charged unless "
                        "downloaded; the next run collects them)",
                        client.api,
                        len(self.job_ids),
                    )
                    return
                self.killed = await cancel_jobs(client, self.job_ids)
        except Exception as exc:
            self.log.warning("could not cancel the VanceAI jobs: %s", safe_message(exc))
            return
        self.log.info("the task was stopped: canceled %d VanceAI job(s)", len(self.killed))
        await self.record_killed(self.killed)

    async def record_killed(self, job_ids: list[str]) -> None:
        """Hook for the batch trigger: write the canceled jobs into the manifest."""

    def event_payload(self, done: dict[str, Job], pending: list[str], api: str) -> dict[str, Any]:
        from vance_provider.core import JobStatus

        failed = [j for j in done.values() if j.status is not JobStatus.SUCCEEDED]
        base = {
            "job_ids": self.job_ids,
            "api": api,
            "succeeded": len(done) - len(failed),
            "failed": len(failed),
            "pending": pending[:MAX_REPORTED_JOBS],
            "pending_count": len(pending),
            "failures": {
                j.id: f"{j.status.value}: {j.error_message or j.raw_status}"
                for j in failed[:MAX_REPORTED_JOBS]
            },
        }
        if failed and self.stop_on_failure:
            first = failed[0]
            return {
                **base,
                "status": "error",
                "message": f"VanceAI job {first.id} {first.status.value}: {first.error_message or first.raw_status}",
            }
        if pending:
            return {
                **base,
                "status": "timeout",
                "message": f"{len(pending)} VanceAI job(s) not finished before the deadline: "
                f"{', '.join(pending[:5])}",
            }
        return {
            **base,
            "status": "success",
            "message": f"{len(done)} VanceAI job(s) finished ({len(failed)} failed)",
            "jobs": [j.to_xcom() for j in list(done.values())[:MAX_REPORTED_JOBS]],
        }


class VanceAIJobTrigger(_VanceAITrigger):
    """Wait until the jobs succeed; an ``error`` event as soon as one fails or is canceled.

    :param conn_id: the VanceAI connection id.
    :param job_ids: one or more job ids.
    :param poll_interval: seconds before the first look; then it backs off up to ``max_poll_interval``.
    :param end_time: epoch seconds after which a ``timeout`` event is sent.
    """

    stop_on_failure = True


class VanceAIBatchTrigger(_VanceAITrigger):
    """Run a batch's sliding window in the triggerer: submit, poll, download and record every
    remaining item of a batch the operator prepared, keeping ``max_concurrency`` jobs on the
    service the whole time; one event when the batch is finished (or timed out, or failed).

    ``batch`` holds the batch's settings as plain data (``BatchSpec`` fields, never a token and
    never storage options holding a secret: those come from ``storage_conn_id`` here). The
    manifest beside the outputs is the trigger's durable state: rebuilt after a triggerer restart,
    it resumes from it (:func:`vance_provider.core.batch.window.run_elsewhere`) and pays nothing twice.
    It holds the batch's lease with the operator's owner id while it runs.

    ``job_ids`` are the jobs the operator submitted before deferring (informational). A trigger
    without ``batch`` (serialized by an older version) only waits for ``job_ids``, as before;
    the operator then hands the rest of the batch to a new trigger. ``carry`` is small plain
    state of the operator (start time, deadline) handed back in the event.
    """

    def __init__(
        self,
        conn_id: str,
        job_ids: list[str] | str | None = None,
        *,
        batch: dict[str, Any] | None = None,
        manifest: str | None = None,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        end_time: float | None = None,
        carry: dict[str, Any] | None = None,
        cancel_on_kill: bool = True,
        storage_conn_id: str | None = None,
        storage_options: dict[str, Any] | None = None,
        resume_after: float | None = None,
    ) -> None:
        super().__init__(
            conn_id,
            list(job_ids or []),
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            end_time=end_time,
            cancel_on_kill=cancel_on_kill,
            resume_after=resume_after,
        )
        self.batch = None if batch is None else dict(batch)
        self.manifest = manifest
        self.carry = dict(carry or {})
        self.storage_conn_id = storage_conn_id
        self.storage_options = storage_options
        self._storage: tuple[dict[str, Any] | None] | None = None  # see _options()

    def _kwargs(self) -> dict[str, Any]:
        return {
            **super()._kwargs(),
            "batch": self.batch,
            "manifest": self.manifest,
            "carry": self.carry,
            "storage_conn_id": self.storage_conn_id,
            "storage_options": self.storage_options,
        }

    def __repr__(self) -> str:
        what = f"batch={self.manifest!r}" if self.batch is not None else f"jobs={len(self.job_ids)}"
        return f"{type(self).__name__}(conn_id={self.conn_id!r}, {what})"

    async def _options(self) -> dict[str, Any] | None:
        """The storage options, read once (with ``storage_conn_id``'s connection) for ``run()`` and
        ``on_kill`` alike (see :meth:`_hook`)."""
        from vance_provider.hooks.vanceai import storage_options_from_connection

        if self._storage is None:
            options = await call_in_thread(storage_options_from_connection, self.storage_conn_id)
            self._storage = ({**(options or {}), **(self.storage_options or {})} or None,)
        return self._storage[0]

    def spec(self, options: dict[str, Any] | None) -> Any:
        """The batch's ``BatchSpec``: never archived afresh here, the deadline as its timeout."""
        from vance_provider.core import BatchSpec

        assert self.batch is not None
        timeout = None if self.end_time is None else max(0.01, self.end_time - time.time())
        return BatchSpec(**{**self.batch, "storage_options": options, "fresh": False, "timeout": timeout})

    async def work(self, client: AsyncVanceClient) -> dict[str, Any]:
        if self.batch is None:
            payload = await super().work(client)
            payload.pop("jobs", None)
            return {**payload, "manifest": self.manifest, "carry": self.carry}
        from vance_provider.core.api.errors import WaitTimeoutError
        from vance_provider.core.batch.window import run_elsewhere

        spec = self.spec(await self._options())
        self.log.info(
            "VanceAI batch: running the window in the triggerer (up to %d job(s) at once), manifest %s",
            spec.max_concurrency,
            self.manifest,
        )
        try:
            result = await run_elsewhere(client, spec)
        except WaitTimeoutError as exc:
            payload = {
                "status": "timeout",
                "message": f"the batch did not finish before its deadline ({safe_message(exc)})",
                "manifest": self.manifest,
                "carry": self.carry,
            }
            if self.carry.get("reason") == "execution_timeout":
                payload["canceled"] = await self._cancel_in_flight(client, spec)
            return payload
        from vance_provider._common import MAX_XCOM_ITEMS

        summary = result.summary(max_outputs=MAX_XCOM_ITEMS)
        return {
            "status": "success",
            "message": f"{result.done} done, {result.failed} failed, {result.skipped} skipped "
            f"of {len(result.items)}; {result.credits_spent:g} credits",
            "summary": summary,
            "manifest": self.manifest,
            "carry": self.carry,
        }

    def error_payload(self, exc: BaseException) -> dict[str, Any]:
        return {**super().error_payload(exc), "manifest": self.manifest, "carry": self.carry}

    async def _cancel_in_flight(self, client: AsyncVanceClient, spec: Any) -> list[str]:
        """The task's ``execution_timeout`` has passed: it fails when it resumes, and Airflow's
        timeout would cut short a cancel made there. The jobs in flight are canceled here, where
        nothing cuts it, and recorded pending (the operator's own cancel then finds none left)."""
        from vance_provider.core.batch.cancel import cancel_manifest_jobs
        from vance_provider.core.batch.runner import manifest_for

        try:
            manifest = await asyncio.to_thread(manifest_for(spec).load)
            canceled = await cancel_manifest_jobs(client, manifest)
        except Exception as exc:
            self.log.warning("could not cancel the VanceAI batch's jobs: %s", safe_message(exc))
            return []
        self.log.info("execution_timeout passed: canceled %d VanceAI job(s) in flight", len(canceled))
        return canceled

    async def on_kill(self) -> None:
        """The task was stopped by a user while deferred: cancel the batch's jobs in flight (Open
        API) and mark them pending in the manifest, so the next run submits exactly those again.

        Airflow calls this after ``run()`` was cancelled: the window has written the manifest and
        released the lease by then. The storage comes from ``storage_conn_id`` or the secret-free
        ``storage_options`` the operator passed; when the manifest cannot be written, the next run
        finds the jobs canceled and submits them again.
        """
        if self.batch is None:
            await super().on_kill()
            return
        if not self.cancel_on_kill or self.killed is not None:
            return
        from vance_provider.core.batch.cancel import cancel_manifest_jobs
        from vance_provider.core.batch.runner import manifest_for

        self.killed = []
        try:
            options = await self._options()
            manifest = await asyncio.to_thread(manifest_for(self.spec(options)).load)
            async with self._hook().async_client() as client:
                self.killed = await cancel_manifest_jobs(client, manifest)
        except Exception as exc:
            self.log.warning("could not cancel the VanceAI batch's jobs: %s", safe_message(exc))
            return
        self.log.info("the task was stopped: canceled %d VanceAI job(s)", len(self.killed))

    async def record_killed(self, job_ids: list[str]) -> None:
        """An older trigger (``job_ids`` only): mark the canceled jobs' items pending in the manifest."""
        if not job_ids or not self.manifest:
            return
        from vance_provider.core.batch.cancel import record_canceled
        from vance_provider.core.state.manifest import Manifest

        try:
            options = await self._options()
            manifest = await asyncio.to_thread(Manifest(self.manifest, options).load)
            if await record_canceled(manifest, job_ids):  # under the batch's lease, only if it is free
                self.log.info("recorded %d canceled job(s) in %s", len(job_ids), self.manifest)
        except Exception as exc:
            self.log.warning(
                "could not record the canceled jobs in the manifest (%s): the next run finds them "
                "canceled and submits them again",
                safe_message(exc),
            )
