"""Stopping a batch on purpose: cancel its in-flight jobs and record them for the next run.

When a task is killed, marked failed, cleared or times out, the jobs it has in flight keep
running (and, on the Open API, billing). This module cancels them and marks their manifest items
``pending`` with a new generation, so the next run submits exactly those again (with a new
idempotency key) and resumes everything else: nothing already done or paid is paid twice.

* :func:`cancel_manifest_jobs` - cancel the submitted jobs recorded in a manifest (all, or some ids);
* :func:`requeue_canceled` - at the start of a run: items whose job was canceled elsewhere (say, by
  a trigger that could not write the manifest) become pending again instead of failing;
* :class:`StoppableBatch` - ``run_batch`` that another thread (a signal handler calling an
  operator's ``on_kill``) can stop: no new submissions, wait for submissions already on the wire,
  then cancel and record everything in flight.

No manifest is written outside the batch's lease: a function given a manifest that no running
batch holds takes the lease first (waiting up to ``LEASE_WAIT`` seconds), reads the manifest again
and changes only the items whose recorded job is still the one canceled (a compare-and-set on the
job id), then releases it. When another run holds the lease, those jobs are its own now: nothing
is canceled or written (the next run finds any job canceled on the service and submits it again).

Only the Open API can cancel a job. Web API jobs are left running: they cost nothing until their
result is downloaded, and the next run collects them from the manifest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..api.errors import BatchLockedError, VanceError
from ..api.models import JobStatus
from ..state.lease import BatchLease, fence_writes
from ..state.manifest import ItemState, Manifest, ManifestItem
from .runner import BatchRunner, manifest_for
from .service import BatchClient
from .spec import BatchResult, BatchSpec

log = logging.getLogger("vance_provider.cancel")
CANCEL_NOTE = "canceled when its task was stopped; the next run submits it again"
LEASE_WAIT = 10.0  # seconds to wait for the batch's lease (its run may be ending) before giving up


def lease_for(manifest: Manifest, owner: str | None = None) -> BatchLease:
    """The lease of the batch whose manifest this is (its destination and scope, as recorded)."""
    meta = manifest.meta or {}
    raw_identity = meta.get("identity")
    identity: dict[str, Any] = raw_identity if isinstance(raw_identity, dict) else {}
    destination = identity.get("destination") or meta.get("destination") or manifest.url.rsplit("/", 1)[0]
    scope = meta.get("lease_scope") if isinstance(meta.get("lease_scope"), str) else None
    return BatchLease.for_batch(destination, manifest.storage_options, scope=scope, owner=owner)


async def _take(lease: BatchLease | _Held, wait: float) -> bool:
    try:
        await asyncio.to_thread(lease.acquire, wait)
    except BatchLockedError as exc:
        log.warning("another run holds the batch now; its jobs and manifest are left to it: %s", exc.message)
        return False
    return True


async def record_canceled(
    manifest: Manifest,
    job_ids: Iterable[str],
    *,
    lease: BatchLease | _Held | None = None,
    owner: str | None = None,
    wait: float = LEASE_WAIT,
) -> list[str]:
    """Mark pending the items of the *stored* manifest whose job is one of ``job_ids`` (canceled),
    while holding the batch's lease; an item whose job id has changed meanwhile (another run
    resubmitted it) is left alone. ``manifest`` gives the place and is updated to what was stored.
    ``lease``: the batch's lease object to take again (a run that has just released it). Returns
    the ids recorded; none when another run holds the lease."""
    wanted = {j for j in job_ids if j}
    if not wanted:
        return []
    lease = lease or lease_for(manifest, owner)
    if not await _take(lease, wait):
        return []
    try:
        stored = Manifest(manifest.url, manifest.storage_options)
        fence_writes(stored, lease)
        await asyncio.to_thread(stored.load)
        marked = []
        for item in stored.items.values():
            if item.job_id in wanted and item.state not in (ItemState.PENDING, ItemState.DONE):
                marked.append(item.job_id or "")
                _requeue(item)
        if marked:
            stored.touch()
            await stored.flush()
        manifest.items, manifest.meta = stored.items, stored.meta
        return marked
    finally:
        await asyncio.to_thread(lease.release)


def can_cancel(client: BatchClient) -> bool:
    return client.capabilities.can_cancel


def _requeue(item: ManifestItem) -> None:
    item.settle(ItemState.PENDING, job_id=None, idempotency_key=None, generation=item.generation + 1)


async def cancel_manifest_jobs(
    client: BatchClient,
    manifest: Manifest,
    job_ids: Iterable[str] | None = None,
    *,
    flush: bool = True,
    owner: str | None = None,
    wait: float = LEASE_WAIT,
) -> list[str]:
    """Cancel the manifest's submitted jobs (or only ``job_ids``) and mark those items pending.

    A job that finished before the cancel arrived is left alone (the next run collects it). Returns
    the ids canceled. ``flush=False``: the caller holds the batch's lease (a running batch); the
    items are changed in memory only. Otherwise the lease is taken first (see the module's
    docstring): when another run holds it, nothing is canceled; the manifest is written with it.
    """
    if flush and can_cancel(client):
        lease = lease_for(manifest, owner)
        if not await _take(lease, wait):
            return []
        try:
            await asyncio.to_thread(manifest.load)  # what the batch recorded last, under the lease
            canceled = await cancel_manifest_jobs(client, manifest, job_ids, flush=False)
            if canceled:
                await record_canceled(manifest, canceled, lease=_Held(lease))
            return canceled
        finally:
            await asyncio.to_thread(lease.release)
    wanted = None if job_ids is None else set(job_ids)
    items = [
        i
        for i in manifest.items.values()
        if i.state == ItemState.SUBMITTED and i.job_id and (wanted is None or i.job_id in wanted)
    ]
    if not items:
        return []
    if not can_cancel(client):
        log.warning(
            "the VanceAI %s API cannot cancel jobs: %d job(s) left running; "
            "they are not charged unless downloaded, and the next run collects them",
            client.api,
            len(items),
        )
        return []

    async def cancel(item: ManifestItem) -> str | None:
        job_id = item.job_id or ""
        try:
            job = await client.cancel(job_id)
        except VanceError as exc:
            log.warning("could not cancel VanceAI job %s: %s", job_id, exc)
            return None
        if job.status is not JobStatus.CANCELED:
            return None  # it finished first: the next run collects it
        _requeue(item)
        return job_id

    canceled = [j for j in await asyncio.gather(*(cancel(i) for i in items)) if j]
    if canceled:
        manifest.touch()
    log.info("canceled %d VanceAI job(s); the next run submits them again", len(canceled))
    return canceled


async def cancel_jobs(client: BatchClient, job_ids: Iterable[str]) -> list[str]:
    """Cancel jobs by id (no manifest): the ids actually canceled."""
    if not can_cancel(client):
        return []

    async def cancel(job_id: str) -> str | None:
        try:
            job = await client.cancel(job_id)
        except VanceError as exc:
            log.warning("could not cancel VanceAI job %s: %s", job_id, exc)
            return None
        return job_id if job.status is JobStatus.CANCELED else None

    return [j for j in await asyncio.gather(*(cancel(j) for j in dict.fromkeys(job_ids))) if j]


def mark_canceled(manifest: Manifest, job_ids: Iterable[str]) -> list[str]:
    """Record jobs already canceled on the service: their items become pending (new generation)."""
    wanted = set(job_ids)
    marked = []
    for item in manifest.items.values():
        if item.state == ItemState.SUBMITTED and item.job_id in wanted:
            marked.append(item.job_id or "")
            _requeue(item)
    if marked:
        manifest.touch()
    return marked


async def requeue_canceled(client: BatchClient, manifest: Manifest, *, wait: float = LEASE_WAIT) -> list[str]:
    """Items whose recorded job is ``canceled`` on the service become pending again (written at
    once, under the batch's lease: see :func:`record_canceled`)."""
    items = [i for i in manifest.items.values() if i.state == ItemState.SUBMITTED and i.job_id]
    if not items:
        return []

    async def status(item: ManifestItem) -> JobStatus | None:
        try:
            return (await client.get_job(item.job_id or "")).status
        except VanceError:
            return None

    statuses = await asyncio.gather(*(status(i) for i in items))
    requeued = [i.job_id or "" for i, s in zip(items, statuses, strict=True) if s is JobStatus.CANCELED]
    if requeued:
        requeued = await record_canceled(manifest, requeued, wait=wait)
    if requeued:
        log.info("%d VanceAI job(s) were canceled since the last run: submitting them again", len(requeued))
    return requeued


class StoppableBatch:
    """A batch run that can be stopped from outside (``on_kill``, a timeout, a Dagster termination).

    ``await batch.run()`` runs it like ``run_batch``; ``await batch.stop()`` (on the same event
    loop), or ``batch.stop_threadsafe()`` from another thread, stops new submissions, waits up to
    ``grace`` seconds for submissions already sent (their job ids must reach the manifest), cancels
    the run, then cancels the jobs in flight and records them. Returns the canceled job ids.
    """

    def __init__(
        self,
        client: BatchClient,
        spec: BatchSpec,
        on_progress: Callable[[Any], None] | None = None,
        *,
        grace: float = 30.0,
    ) -> None:

        self.client = client
        self.spec = spec
        self.grace = grace
        outer = self

        class _Runner(BatchRunner):
            # Every submission goes through _submit (the window's and submit_item's alike): a stop
            # waits for those already sent, so that their jobs are in the manifest to be canceled.
            async def _submit(self, item: ManifestItem, staged: str | None) -> bool:
                outer._submitting += 1
                try:
                    return await super()._submit(item, staged)
                finally:
                    outer._submitting -= 1
                    if outer._submitting == 0:
                        outer._idle.set()

        self.runner = _Runner(client, spec, on_progress)
        self._submitting = 0
        self._idle = asyncio.Event()
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopped = False
        self.canceled: list[str] = []

    @property
    def manifest(self) -> Manifest:
        return self.runner.manifest

    async def run(self) -> BatchResult:

        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        # Jobs canceled since the last run (by a trigger, or by hand) are submitted again.
        manifest = await asyncio.to_thread(manifest_for(self.spec).load)
        await requeue_canceled(self.client, manifest)
        return await self.runner.run()

    async def stop(self, reason: str = "the task was stopped") -> list[str]:
        """Stop the run: see the class docstring. Returns the job ids canceled."""
        if self.stopped:
            return self.canceled
        self.stopped = True
        runner = self.runner
        runner.stop_reason = runner.stop_reason or reason
        if self._submitting:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), self.grace)
            except TimeoutError:
                log.warning("%d VanceAI submission(s) unanswered after %gs", self._submitting, self.grace)
        # Cancel the jobs while the run still holds the batch (its lease), record them, then end
        # the run: its own ``finally`` writes the manifest and releases the lease.
        self.canceled = await cancel_manifest_jobs(self.client, runner.manifest, flush=False)
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        # A poll that saw a job canceled may have marked its item failed meanwhile: pending it is.
        # The run has ended and released its lease: the manifest is written only if the lease can
        # be taken again, and only over items whose job is still the one canceled (another run
        # may hold the batch by now, or have run it since).
        if self.canceled and not runner.lease.held:
            await record_canceled(runner.manifest, self.canceled, lease=runner.lease, wait=0.0)
        elif self.canceled:  # the run has not started its window (still holds the lease)
            for item in runner.manifest.items.values():
                if item.job_id in self.canceled and item.state != ItemState.PENDING:
                    _requeue(item)
            runner.manifest.touch()
            await runner.manifest.flush()
        return self.canceled

    def stop_threadsafe(
        self, reason: str = "the task was stopped", timeout: float | None = None
    ) -> list[str]:
        """:meth:`stop` from another thread; blocks until done (or ``timeout``)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return []
        future = asyncio.run_coroutine_threadsafe(self.stop(reason), loop)
        return future.result(timeout if timeout is not None else self.grace + 60)


class _Held:
    """A lease this caller holds already: taking it is a no-op, releasing it is left to the caller."""

    def __init__(self, lease: BatchLease) -> None:
        self.lease = lease

    def acquire(self, timeout: float = 0.0) -> None:
        self.lease.fence()

    def release(self) -> None:
        pass

    def fence(self) -> None:
        self.lease.fence()
