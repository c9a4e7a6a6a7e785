"""Triggers that wait for VanceAI jobs in the triggerer, without holding a worker slot.

They only poll: a triggerer restart rebuilds them from ``serialize()`` (connection id, job ids,
poll interval, deadline - never a token) and they carry on, submitting nothing. Each yields
exactly one ``TriggerEvent`` and returns:

    {"status": "success" | "error" | "timeout", "message": str, "job_ids": [...], ...}
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from vance_provider.core import AsyncVanceClient, Job

MAX_REPORTED_JOBS = 50  # keep events (stored in the metadata DB) small


def safe_message(exc: BaseException) -> str:
    """An error message for an event or a log line: our own errors' text, scrubbed of any token."""
    from vance_provider.core.errors import VanceError
    from vance_provider.core.secrets import redact

    if isinstance(exc, VanceError):
        return redact(f"{type(exc).__name__}: {exc}")
    return f"{type(exc).__name__} while polling VanceAI"


async def poll_jobs(
    client: AsyncVanceClient,
    job_ids: list[str],
    *,
    poll_interval: float,
    max_poll_interval: float,
    end_time: float | None,
    stop_on_failure: bool,
    log: Any = None,
) -> tuple[dict[str, Job], list[str]]:
    """Poll until every job is terminal (or one failed, if ``stop_on_failure``), or until ``end_time``.

    The first look comes after ``poll_interval``; later looks back off by 1.5x up to
    ``max_poll_interval`` and never sleep past the deadline. Returns (terminal jobs, still pending).
    """
    from vance_provider.core import JobStatus

    done: dict[str, Job] = {}
    pending = list(dict.fromkeys(job_ids))
    interval = max(0.05, poll_interval)
    while pending:
        jobs = await asyncio.gather(*(client.get_job(j) for j in pending))
        for job in jobs:
            if job.status.terminal:
                done[job.id] = job
        pending = [j for j in pending if j not in done]
        failed = [j for j in done.values() if j.status is not JobStatus.SUCCEEDED]
        if not pending or (stop_on_failure and failed):
            break
        now = time.time()
        if end_time is not None and now >= end_time:
            break
        if log is not None:
            log.info(
                "VanceAI: %d of %d job(s) finished; next look in %.1fs", len(done), len(job_ids), interval
            )
        await asyncio.sleep(interval if end_time is None else max(0.0, min(interval, end_time - now)))
        interval = min(max_poll_interval, interval * 1.5)
    return done, pending


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
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.job_ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = float(max_poll_interval)
        self.end_time = None if end_time is None else float(end_time)

    def _kwargs(self) -> dict[str, Any]:
        return {
            "conn_id": self.conn_id,
            "job_ids": list(self.job_ids),
            "poll_interval": self.poll_interval,
            "max_poll_interval": self.max_poll_interval,
            "end_time": self.end_time,
        }

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", self._kwargs()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(conn_id={self.conn_id!r}, jobs={len(self.job_ids)})"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from vance_provider.hooks.vanceai import VanceAIHook

        try:
            hook = VanceAIHook(self.conn_id, caller="airflow-triggerer")
            async with hook.async_client() as client:
                done, pending = await poll_jobs(
                    client,
                    self.job_ids,
                    poll_interval=self.poll_interval,
                    max_poll_interval=self.max_poll_interval,
                    end_time=self.end_time,
                    stop_on_failure=self.stop_on_failure,
                    log=self.log,
                )
                api = client.api
        except Exception as exc:
            yield TriggerEvent({"status": "error", "message": safe_message(exc), "job_ids": self.job_ids})
            return
        yield TriggerEvent(self.event_payload(done, pending, api))

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
    """Wait until every job of a batch wave is terminal; failures are reported, not fatal here.

    The operator then stores the results and applies its failure policy. ``manifest`` (the
    batch manifest's URL) is informational: the trigger never reads storage. ``carry`` is small
    plain state of the operator (credits spent so far, start time, deadline) handed back in the
    event, so it survives a triggerer restart and runners that drop ``next_kwargs``.
    """

    def __init__(
        self,
        conn_id: str,
        job_ids: list[str] | str,
        *,
        manifest: str | None = None,
        poll_interval: float = 5.0,
        max_poll_interval: float = 60.0,
        end_time: float | None = None,
        carry: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            conn_id,
            job_ids,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            end_time=end_time,
        )
        self.manifest = manifest
        self.carry = dict(carry or {})

    def _kwargs(self) -> dict[str, Any]:
        return {**super()._kwargs(), "manifest": self.manifest, "carry": self.carry}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in super().run():
            yield TriggerEvent({**event.payload, "manifest": self.manifest, "carry": self.carry})

    def event_payload(self, done: dict[str, Job], pending: list[str], api: str) -> dict[str, Any]:
        payload = super().event_payload(done, pending, api)
        payload.pop("jobs", None)
        return payload
