"""Deferrable batches in steps, built from the core's ``BatchRunner`` pieces.

``run_batch`` drives a whole batch in one coroutine (submit, poll, download). A deferrable
operator must instead *submit* and hand the waiting to the triggerer, then *collect* when the
trigger fires. One step does, in order:

1. ``prepare()`` the batch (list inputs, read the manifest: skip what is done, find jobs already
   submitted by an earlier try) and, on the first step only, ``preflight()`` the credits;
2. collect the in-flight jobs that finished: download, record credits, mark them done/failed;
3. submit pending items while fewer than ``max_concurrency`` jobs are in flight;
4. flush the manifest, so every job id is durable before the task defers.

The step returns the job ids to wait for, or - when nothing is in flight and nothing is
pending - the final ``BatchResult``. Everything is kept in the manifest beside the outputs,
so a retried or cleared task (or a restarted triggerer) resumes without paying twice.

It uses ``BatchRunner``'s stepwise methods: ``submit_item`` (one submission, within the
budget and balance), ``run_item`` (poll, download, record) and ``finish_item`` (count it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vance_provider.core import AsyncVanceClient, BatchResult, BatchSpec
    from vance_provider.core.batch import BatchRunner
    from vance_provider.core.manifest import ManifestItem


@dataclass
class StepResult:
    job_ids: list[str]  # in flight: wait for these, then step again
    manifest: str
    spent: float  # credits spent by this task run so far
    started: float  # epoch seconds when this task run's first step began
    remaining: int = 0  # pending items not submitted yet
    result: BatchResult | None = None  # the batch is finished

    @property
    def finished(self) -> bool:
        return self.result is not None

    def carry(self) -> dict[str, Any]:
        """What the next step needs, as plain data (travels through the trigger)."""
        return {"spent": self.spent, "started": self.started}


async def _submit_one(runner: BatchRunner, item: ManifestItem) -> None:
    from vance_provider.core.errors import VanceError
    from vance_provider.core.manifest import ItemState

    try:
        await runner.submit_item(item)
    except VanceError as exc:
        item.set(ItemState.FAILED, error=exc.message, error_code=str(exc.code or type(exc).__name__))
    if item.state in (ItemState.FAILED, ItemState.SKIPPED):
        runner.finish_item(item)


async def batch_step(
    client: AsyncVanceClient,
    spec: BatchSpec,
    *,
    first: bool,
    spent: float = 0.0,
    started: float | None = None,
) -> StepResult:
    """One step of a deferrable batch (see the module docstring)."""
    from vance_provider.core.batch import BatchRunner, manifest_for
    from vance_provider.core.manifest import ItemState

    started = started or time.time()
    held: dict[str, ManifestItem] = {}
    if not first:
        spec = dataclasses.replace(spec, fresh=False)  # only the first step starts afresh
        # Failures and skips recorded by earlier steps of this task run stay as they are: the
        # core's prepare() would reset them to pending, which is right for a new run only.
        before = await asyncio.to_thread(manifest_for(spec).load)
        held = {s: i for s, i in before.items.items() if i.state in (ItemState.FAILED, ItemState.SKIPPED)}

    runner = BatchRunner(client, spec)
    work = await runner.prepare()  # takes the batch's lease: released when this step ends
    try:
        return await _step(runner, client, spec, work, held, first=first, spent=spent, started=started)
    finally:
        await runner.close()


async def _step(
    runner: BatchRunner,
    client: AsyncVanceClient,
    spec: BatchSpec,
    work: list[ManifestItem],
    held: dict[str, ManifestItem],
    *,
    first: bool,
    spent: float,
    started: float,
) -> StepResult:
    from vance_provider.core.batch import BatchResult, item_result
    from vance_provider.core.manifest import ItemState

    if held:
        for source, old in held.items():
            if source in runner.manifest.items:
                runner.manifest.items[source] = old
        work = [i for i in work if i.source not in held]
        runner.manifest.touch()
        skipped = [i for i in held.values() if i.state == ItemState.SKIPPED]
        if skipped:
            runner.stop_reason = (skipped[0].error or "stopped").removeprefix("not submitted: ")
        elif spec.on_failure == "fail_fast":
            runner.stop_reason = f"fail_fast: {next(iter(held))} failed"

    pending = [i for i in work if i.state == ItemState.PENDING]
    inflight = [i for i in work if i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED) and i.job_id]
    if first:
        await runner.preflight(work)
    elif pending and not runner.stop_reason:
        runner.available = (await client.balance()).available
    # Carry the run's spending into the budget check; the balance just read already excludes it.
    runner.spent = spent
    if math.isfinite(runner.available):
        runner.available += spent
    runner.committed = sum(runner.estimate(i) for i in inflight)
    if runner.caps.reserves_credits and math.isfinite(runner.available):
        runner.available += runner.committed  # the Open API balance already excludes their reservations
    runner.latency.value = 0.0  # collect at once: the trigger saw these jobs finish

    # Collect what finished.
    still: list[ManifestItem] = []
    if inflight:
        jobs = await asyncio.gather(
            *(client.get_job(i.job_id or "") for i in inflight), return_exceptions=True
        )
        finished = []
        for item, job in zip(inflight, jobs, strict=True):
            if isinstance(job, BaseException) or job.status.terminal:
                finished.append(item)  # an error (say, the job expired) is recorded by run_item
            else:
                still.append(item)
        await asyncio.gather(*(runner.run_item(i) for i in finished))

    # Submit while there is room.
    while pending:
        if runner.stop_reason:
            wave, pending = pending, []
        else:
            room = max(0, spec.max_concurrency - len(still))
            wave, pending = pending[:room], pending[room:]
        if not wave:
            break
        await asyncio.gather(*(_submit_one(runner, i) for i in wave))
        still += [i for i in wave if i.state == ItemState.SUBMITTED]
        if still:
            break

    runner.manifest.touch()
    await runner.manifest.flush()
    if still:
        return StepResult(
            [i.job_id for i in still if i.job_id],
            runner.manifest.url,
            runner.spent,
            started,
            remaining=len(pending),
        )
    items = [item_result(runner.manifest.items[s]) for s in runner.sources]
    result = BatchResult(
        items,
        runner.spent,
        time.time() - started,
        runner.manifest.url,
        runner.stop_reason,
        client.request_counts,
    )
    return StepResult([], runner.manifest.url, runner.spent, started, result=result)


async def cancel_in_flight(client: AsyncVanceClient, spec: BatchSpec) -> list[str]:
    """Cancel the batch's submitted jobs (Open API) and mark them pending again in the manifest,
    with a new generation so the next run submits afresh. Returns the canceled job ids."""
    from vance_provider.core import JobStatus
    from vance_provider.core.batch import manifest_for
    from vance_provider.core.errors import VanceError
    from vance_provider.core.manifest import ItemState

    manifest = await asyncio.to_thread(manifest_for(spec).load)
    items = [i for i in manifest.items.values() if i.state == ItemState.SUBMITTED and i.job_id]

    async def cancel(item: ManifestItem) -> str | None:
        try:
            job = await client.cancel(item.job_id or "")
        except VanceError:
            return None  # already finished, or gone: leave it for the next run to collect
        if job.status is not JobStatus.CANCELED:
            return None
        item.set(ItemState.PENDING, job_id=None, generation=item.generation + 1, error=None, error_code=None)
        return job.id

    canceled = [j for j in await asyncio.gather(*(cancel(i) for i in items)) if j]
    if canceled:
        manifest.touch()
        await manifest.flush()
    return canceled
