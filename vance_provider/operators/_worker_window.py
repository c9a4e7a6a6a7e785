"""The worker's part of a deferrable batch: run the window here while the rest looks short.

A deferred task may not resume before its trigger's ``resume_after``, a few seconds after the
deferral (the guard against Airflow's resume race: see :func:`vance_provider._common.resume_after`).
A batch whose rest is shorter than that hold would wait for it in the triggerer, plus the
deferral's round trip. So the worker runs the batch's sliding window itself and hands the rest to
the triggerer only once the rest looks longer than the hold; a batch that ends first never defers.

The hand-over is a triggerer restart's: the window is cancelled, its ``finally`` writes the
manifest (every job id, every result stored) and releases the lease, and the trigger resumes
from the manifest (:func:`vance_provider.core.batch.window.run_elsewhere`). The jobs in flight
keep running meanwhile; a job whose creation was on the wire is found again by its idempotency
key; a result stored here is not fetched again, and one being fetched is fetched again for free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vance_provider.core import AsyncVanceClient, BatchResult, BatchSpec
    from vance_provider.core.batch.runner import BatchRunner
    from vance_provider.core.batch.window import HandOff

TICK = 0.1  # seconds between two looks at the window's progress
OVERRUN = 2.0  # a batch still running after this many holds is handed over, whatever it looks like


def now() -> float:
    """The window's clock, monotonic seconds (a test may replace it)."""
    return time.monotonic()


def rest_estimate(elapsed: float, finished: int, left: int, concurrency: int) -> float:
    """Seconds the ``left`` unfinished items still need, from ``finished`` items in ``elapsed``
    seconds with ``concurrency`` jobs at once.

    The window works in rounds of ``concurrency`` jobs; a round is taken to last the elapsed time
    over the rounds finished plus the one under way (so before any job ends, the jobs in flight are
    expected to run as long again: a slow service is seen as slow before its first job ends), and
    at least one round is left while anything is."""
    if left <= 0:
        return 0.0
    c = max(1, concurrency)
    return elapsed * max(left, c) / (finished + c)


def hand_over(elapsed: float, finished: int, left: int, concurrency: int, hold: float) -> bool:
    """Whether to hand the rest of the batch to the triggerer now: it looks longer than the
    deferral's ``hold``, or the batch has run ``OVERRUN`` holds here already."""
    if left <= 0:
        return False
    return elapsed >= OVERRUN * hold or rest_estimate(elapsed, finished, left, concurrency) >= hold


def _finished(runner: BatchRunner) -> int:
    p = runner.progress
    return p.done + p.failed + p.skipped


class WorkerWindow:
    """The window of a deferrable batch, run in the worker until it ends or its rest looks longer
    than ``hold`` seconds (or ``end_time``, epoch seconds, passes: the trigger then reports the
    timeout). ``run()`` returns a :class:`~vance_provider.core.batch.window.HandOff`: the result,
    or what is in flight and pending for the trigger. ``stop_threadsafe()`` (the task is killed
    meanwhile) ends the window, cancels the jobs in flight and records them for the next run.
    Only for a backend whose results another process can collect (the operator checks).

    ``clock`` (monotonic seconds; default: :func:`now`) measures the window's progress."""

    def __init__(
        self,
        client: AsyncVanceClient,
        spec: BatchSpec,
        *,
        hold: float,
        end_time: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client, self.spec, self.hold, self.end_time = client, spec, hold, end_time
        self.clock = clock or now
        self.runner: BatchRunner | None = None
        self.elapsed = 0.0  # seconds the window ran here
        self.handed_over = False
        self.stopped = False
        self.canceled: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._window: asyncio.Task[BatchResult] | None = None
        self._stop_done: asyncio.Event | None = None

    async def run(self) -> HandOff:
        from vance_provider.core.batch.runner import BatchRunner
        from vance_provider.core.batch.window import HandOff

        self._loop = asyncio.get_running_loop()
        self._stop_done = asyncio.Event()
        self.runner = runner = BatchRunner(self.client, self.spec)
        work = await runner.start()  # the lease is held from here; run_window releases it
        try:
            await runner.adopt_running(work)  # an earlier run's jobs are this run's (see hand_off)
            if self.stopped:  # killed while preparing: nothing was submitted
                raise asyncio.CancelledError
        except BaseException:
            await runner.close()
            raise
        started = self.clock()
        finished_before = _finished(runner)
        self._window = window = asyncio.create_task(runner.run_window(work))
        try:
            while not window.done():
                await asyncio.wait({window}, timeout=TICK)
                if window.done() or self.stopped:
                    break
                self.elapsed = self.clock() - started
                finished = _finished(runner) - finished_before
                late = self.end_time is not None and time.time() >= self.end_time
                c = self.spec.max_concurrency
                if late or hand_over(self.elapsed, finished, len(work) - finished, c, self.hold):
                    self.handed_over = True
                    break
        finally:
            if not window.done():
                window.cancel()
                await asyncio.wait({window})  # its cleanup: the manifest written, the lease released
        self.elapsed = self.clock() - started
        if self.stopped:  # stop() cancels the jobs in flight: nothing to hand over
            await self._stop_done.wait()  # its count of canceled jobs is the task's message
            raise asyncio.CancelledError
        if not window.cancelled():
            self.handed_over = False  # it ended before the hand-over could cut it short
            return HandOff(runner.manifest.url, [], 0, result=window.result())
        from vance_provider.core.state.manifest import ItemState

        waiting = [
            i.job_id for i in work if i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED) and i.job_id
        ]
        pending = sum(1 for i in work if i.state == ItemState.PENDING)
        if not waiting and not pending:  # every item ended as the window was cut short
            return HandOff(runner.manifest.url, [], 0, result=runner.result(self.elapsed))
        runner.account.hand_over()  # the jobs' credits stay reserved for the trigger collecting them
        return HandOff(runner.manifest.url, waiting, pending)

    async def stop(self, reason: str = "the task was stopped") -> list[str]:
        """End the window (its manifest written, its lease released), cancel the jobs in flight
        (Open API) and mark their items pending in the manifest; the job ids canceled."""
        from vance_provider.core.batch.cancel import cancel_manifest_jobs
        from vance_provider.core.batch.runner import manifest_for

        if self.stopped:
            return self.canceled
        self.stopped = True
        try:
            if self.runner is not None:
                self.runner.stop_reason = self.runner.stop_reason or reason
            window = self._window
            if window is not None and not window.done():
                window.cancel()
                await asyncio.wait({window})
            if window is None or not self.client.capabilities.can_cancel:
                return self.canceled  # nothing submitted yet, or the web API: left running
            manifest = await asyncio.to_thread(manifest_for(self.spec).load)
            self.canceled = await cancel_manifest_jobs(self.client, manifest, owner=self.spec.owner)
            return self.canceled
        finally:
            if self._stop_done is not None:
                self._stop_done.set()

    def stop_threadsafe(self, reason: str = "the task was stopped", timeout: float = 90.0) -> list[str]:
        """:meth:`stop` from another thread (an operator's ``on_kill``); blocks until done."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return []
        return asyncio.run_coroutine_threadsafe(self.stop(reason), loop).result(timeout)
