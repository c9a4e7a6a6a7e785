"""A batch handed from one process to another: prepared in one, its window run in the other.

An orchestrator that waits outside its workers (Airflow's triggerer) runs a batch in two parts:

* :func:`hand_off` - in the worker: list, check and plan the inputs once (``prepare``), check the
  credits (``preflight``), submit the first window of jobs so the service starts at once, write
  the manifest and release the lease. Returns what is in flight, or the result when nothing is
  left to wait for.
* :func:`run_elsewhere` - in the waiting process: ``resume`` from the manifest (no second check of
  the inputs, nothing reset) and run the sliding window to the end (``run_window``): submit,
  poll, download, record, a freed job slot refilled at once. The manifest is its durable state:
  interrupted (a triggerer restart), it is simply called again and carries on, paying nothing
  twice (idempotency keys on the Open API; the web API charges at the first download only).

Both take the batch's lease with ``spec.owner`` (the same run re-enters it). Only backends whose
results can be collected from another process may be handed off
(``client.capabilities.collectable_elsewhere``): :func:`hand_off` refuses the others.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..api.errors import InvalidConfigError
from ..state.manifest import ItemState
from .runner import BatchRunner
from .service import BatchClient
from .spec import BatchResult, BatchSpec


@dataclass
class HandOff:
    """What the worker hands on: the jobs in flight and the items still to submit, or the result."""

    manifest: str
    job_ids: list[str]  # submitted and not collected yet
    pending: int  # planned, not submitted yet
    result: BatchResult | None = None  # nothing left to wait for: the batch is finished

    @property
    def finished(self) -> bool:
        return self.result is not None


def can_hand_off(client: BatchClient) -> bool:
    """Whether another process can collect this backend's results (VisionCraft: no)."""
    return bool(client.capabilities.collectable_elsewhere)


async def hand_off(client: BatchClient, spec: BatchSpec, *, submit_ahead: bool = True) -> HandOff:
    """The worker's part: prepare once, check the credits, submit the first window, write the
    manifest, release the lease (see the module docstring)."""
    if not can_hand_off(client):
        raise InvalidConfigError(
            f"the {client.api} API keeps results in the submitting process: they cannot be "
            "collected by another one",
            hint="run this batch in one process (in Airflow: deferrable=False)",
        )
    runner = BatchRunner(client, spec)
    work = await runner.start()
    try:
        await runner.adopt_running(work)
        if submit_ahead:
            await runner.submit_ahead(work)
        runner.manifest.touch()
        await runner.manifest.flush()
        runner.account.hand_over()  # the jobs' credits stay reserved for the process collecting them
    except BaseException:
        # Interrupted while starting jobs (say, the task's timeout): the ids of the jobs created
        # are written all the same, for the caller's cancel or the next run.
        runner.manifest.touch()
        await asyncio.shield(runner.manifest.flush())
        raise
    finally:
        await runner.close()
    waiting = [i for i in work if i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED)]
    pending = sum(1 for i in work if i.state == ItemState.PENDING)
    if waiting or pending:
        return HandOff(runner.manifest.url, [i.job_id for i in waiting if i.job_id], pending)
    return HandOff(runner.manifest.url, [], 0, result=runner.result())


async def run_elsewhere(client: BatchClient, spec: BatchSpec) -> BatchResult:
    """The waiting process's part: resume from the manifest and run the window to the end."""
    runner = BatchRunner(client, spec)
    work = await runner.resume()
    return await runner.run_window(work)
