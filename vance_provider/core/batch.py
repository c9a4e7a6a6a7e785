"""The resumable batch engine: many jobs at once, within limits, paying nothing twice.

    result = await run_batch(client, BatchSpec(source="s3://in/", destination="s3://out/", tool="upscale",
                                               config={"scale": 4}))

1. List the inputs and name their outputs safely.
2. Check every input locally and the destination before anything is uploaded.
3. Read the manifest: skip what is done, resume jobs already submitted.
4. Check the whole batch's estimated credits against the balance and the budget.
5. Submit, poll and download with bounded concurrency; keep the manifest current.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from .client import AsyncVanceClient, default_idempotency_key
from .errors import (
    BatchFailedError,
    BudgetExceededError,
    ConcurrencyLimitedError,
    InsufficientCreditsError,
    InvalidInputError,
    VanceError,
    WaitTimeoutError,
)
from .inputs import check_input
from .manifest import ItemState, Manifest, ManifestItem
from .models import Job, JobStatus
from .storage import MEDIA_EXTENSIONS, SourceFile, check_writable, exists, join, list_sources, safe_name
from .tools import ToolCall

log = logging.getLogger("vance_provider.batch")
FailurePolicy = Literal["continue", "fail", "fail_fast"]


@dataclass
class BatchSpec:
    source: str | list[str]
    destination: str
    tool: str
    config: dict[str, Any] | None = None
    jconfig: dict[str, Any] | str | None = None
    output_format: str | None = None
    max_concurrency: int = 8
    credit_budget: float | None = None
    poll_interval: float = 2.0
    max_poll_interval: float = 15.0
    on_failure: FailurePolicy = "fail"
    on_insufficient_credits: Literal["fail", "partial"] = "fail"
    force: bool = False
    timeout: float | None = None
    storage_options: dict[str, Any] | None = None
    allow_empty: bool = False  # an empty source is an error unless this is set
    manifest: str | None = None  # where the manifest lives; default: _vance_manifest.json in destination


@dataclass
class ItemResult:
    source: str
    state: str
    output: str | None = None
    job_id: str | None = None
    credits: float = 0.0
    error: str | None = None
    error_code: str | None = None


@dataclass
class BatchResult:
    items: list[ItemResult]
    credits_spent: float
    elapsed: float
    manifest: str
    stopped: str | None = None  # why submission stopped early, if it did
    requests: dict[str, int] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(1 for i in self.items if i.state == state)

    @property
    def done(self) -> int:
        return self.count(ItemState.DONE)

    @property
    def failed(self) -> int:
        return self.count(ItemState.FAILED)

    @property
    def skipped(self) -> int:
        return self.count(ItemState.SKIPPED)

    @property
    def outputs(self) -> list[str]:
        return [i.output for i in self.items if i.state == ItemState.DONE and i.output]

    def summary(self, max_outputs: int = 50) -> dict[str, Any]:
        """Small plain data for XCom or metadata (never big lists, never tokens)."""
        failures = [(i.source, i.error) for i in self.items if i.state == ItemState.FAILED]
        return {
            "total": len(self.items),
            "done": self.done,
            "failed": self.failed,
            "skipped": self.skipped,
            "credits_spent": round(self.credits_spent, 3),
            "elapsed_s": round(self.elapsed, 2),
            "manifest": self.manifest,
            "stopped": self.stopped,
            "outputs": self.outputs[:max_outputs],
            "failures": dict(failures[:max_outputs]),
        }

    def raise_for_failures(self, policy: FailurePolicy = "fail") -> BatchResult:
        if policy != "continue" and self.failed:
            first = next(i for i in self.items if i.state == ItemState.FAILED)
            raise BatchFailedError(
                f"{self.failed} of {len(self.items)} item(s) failed; first: {first.source}: {first.error}",
                result=self,
            )
        return self


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    credits_spent: float = 0.0
    last: ItemResult | None = None


class AdaptiveLimit:
    """At most ``limit`` jobs in flight; shrinks when the service says 429 concurrency, regrows slowly."""

    def __init__(self, limit: int) -> None:
        self.max = self.limit = max(1, limit)
        self.in_use = 0
        self.successes = 0
        self._cond = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_use < self.limit)
            self.in_use += 1

    async def release(self) -> None:
        async with self._cond:
            self.in_use -= 1
            self._cond.notify_all()

    def shrink(self) -> None:
        self.limit = max(1, min(self.limit, self.in_use) - 1)
        self.successes = 0

    def grow(self) -> None:
        self.successes += 1
        if self.limit < self.max and self.successes >= 5:
            self.limit += 1
            self.successes = 0


class LatencyEstimate:
    """When to look first: learns how long jobs take, so most first polls find them done.

    A first poll that finds the job done may have waited too long, so the next one comes a
    little sooner; one that finds it still running moves the estimate toward what was seen.
    (Averaging observed completion times alone would only ever grow: each is at least the wait.)
    """

    def __init__(self, initial: float) -> None:
        self.value = initial

    def observe(self, seconds: float, first_poll_hit: bool) -> None:
        if first_poll_hit:
            self.value = max(0.02, self.value * 0.97)
        else:
            self.value += 0.5 * (seconds - self.value)


def call_hash(call: ToolCall) -> str:
    return hashlib.sha256(call.fingerprint().encode()).hexdigest()[:16]


def plan_outputs(
    sources: list[SourceFile], destination: str, call: ToolCall, reserved: dict[str, str] | None = None
) -> dict[str, str]:
    """Output URL stem per input: safe names, same sub-folders, collisions made distinct.

    ``reserved`` (source -> output, from the manifest) keeps earlier output names: an input keeps
    its name, and no other input, even one added later that sorts first, is given it.
    """
    prefix = destination.rstrip("/") + "/"
    kept: dict[str, str] = {}
    for url, out in (reserved or {}).items():
        if out.startswith(prefix):
            rel = PurePosixPath(out[len(prefix) :])
            kept[url] = str(rel.with_suffix("") if rel.suffix.lower() in MEDIA_EXTENSIONS else rel)
    planned: dict[str, str] = {}
    taken: set[str] = {stem.lower() for stem in kept.values()}
    for src in sources:
        stem = kept.get(src.url)
        if stem is None:
            rel = safe_name(src.relative)
            stem = str(PurePosixPath(rel).with_suffix(""))
            if stem.lower() in taken:
                stem = f"{stem}-{hashlib.sha256(src.url.encode()).hexdigest()[:6]}"
            taken.add(stem.lower())
        ext = call.output_format or ("mp4" if call.media == "video" else None)
        planned[src.url] = join(destination, f"{stem}.{ext}" if ext else stem)
    return planned


def manifest_for(spec: BatchSpec) -> Manifest:
    """The batch's manifest: ``spec.manifest``, or ``_vance_manifest.json`` in the destination."""
    if spec.manifest:
        return Manifest(spec.manifest, spec.storage_options)
    return Manifest.for_destination(spec.destination, spec.storage_options)


class BatchRunner:
    """Runs a batch. ``run()`` does it all; the stepwise methods (``prepare``, ``preflight``,
    ``submit_item``, ``run_item``, ``finish_item``) let a deferrable operator submit, hand the
    waiting to a trigger, and collect later."""

    def __init__(
        self, client: AsyncVanceClient, spec: BatchSpec, on_progress: Callable[[Progress], None] | None = None
    ) -> None:
        self.client, self.spec, self.on_progress = client, spec, on_progress
        self.call = client.tool_call(
            spec.tool, spec.config, output_format=spec.output_format, jconfig=spec.jconfig
        )
        self.manifest = manifest_for(spec)
        self.limit = AdaptiveLimit(spec.max_concurrency)
        self.latency = LatencyEstimate(spec.poll_interval)
        self.stop_reason: str | None = None
        self.spent = 0.0
        self.committed = 0.0  # estimated credits of jobs submitted but not yet charged
        self.progress = Progress(total=0)
        self.available = float("inf")
        self.sources: list[str] = []
        self._submitted_at: dict[str, float] = {}
        self._recorded: dict[str, int] = {}  # manifest change that recorded each item's job id

    # --- planning (nothing is uploaded or charged here) ----------------------------------------
    async def prepare(self) -> list[ManifestItem]:
        so = self.spec.storage_options
        sources = await asyncio.to_thread(list_sources, self.spec.source, None, so)
        if not sources and not self.spec.allow_empty:
            raise InvalidInputError(
                "no input files found (JPG, PNG, WEBP or video)",
                source=str(self.spec.source),
                hint="check the prefix or glob, or pass allow_empty=True",
            )
        await asyncio.to_thread(check_writable, self.spec.destination, so)
        await asyncio.to_thread(self.manifest.load)
        chash = call_hash(self.call)
        self.manifest.meta.update(
            {"tool": self.call.tool, "api": self.client.api, "destination": self.spec.destination}
        )
        outputs = plan_outputs(
            sources,
            self.spec.destination,
            self.call,
            {s: i.output for s, i in self.manifest.items.items() if i.output},
        )
        self.sources = [s.url for s in sources]
        work: list[ManifestItem] = []
        for src in sources:
            item = self.manifest.items.get(src.url)
            same_input = item is not None and item.fingerprint == src.fingerprint and item.call == chash
            if item is None or not same_input or (self.spec.force and item.state == ItemState.DONE):
                generation = (item.generation + 1) if item is not None else 0
                item = ManifestItem(
                    src.url,
                    src.fingerprint,
                    chash,
                    output=outputs[src.url],
                    generation=generation,
                    tool=self.call.tool,
                )
                self.manifest.items[src.url] = item
            elif (
                item.state == ItemState.DONE
                and item.output
                and await asyncio.to_thread(exists, item.output, so)
            ):
                self.progress.done += 1  # counted, so the progress reaches the total on a rerun
                continue  # done before, output still there: nothing to do, nothing to pay
            elif item.state in (ItemState.FAILED, ItemState.SKIPPED, ItemState.DONE):
                # A job that failed on the service is refunded: retry it as a new submission. After
                # any other failure (say, a lost answer) the same key finds the same job again.
                item.set(
                    ItemState.PENDING,
                    job_id=None,
                    error=None,
                    error_code=None,
                    job_failed=False,
                    generation=item.generation + item.job_failed,
                )
            if item.state == ItemState.PENDING:
                try:
                    await asyncio.to_thread(
                        check_input, src.url, src.size, self.call.media, self.client.api, so
                    )
                except InvalidInputError as exc:
                    item.set(
                        ItemState.FAILED,
                        error=exc.message + (f" ({exc.hint})" if exc.hint else ""),
                        error_code=type(exc).__name__,
                    )
                    log.warning("skipping invalid input: %s", exc)
                    self.progress.failed += 1
                    if self.spec.on_failure == "fail_fast" and not self.stop_reason:
                        self.stop_reason = f"fail_fast: {item.source} failed"
                    continue
                item.idempotency_key = self._key(item)
            work.append(item)
        self.manifest.touch()
        await self.manifest.flush()
        self.progress.total = len(sources)
        return work

    def _key(self, item: ManifestItem) -> str:
        # Scoped to this manifest: another batch of the same input is another logical submission.
        return default_idempotency_key(
            item.source, item.fingerprint, self.call, item.generation, scope=self.manifest.url
        )

    async def preflight(self, work: list[ManifestItem]) -> None:
        """The whole batch's estimate against the balance and the budget, before spending."""
        unpaid = [
            i
            for i in work
            if i.state == ItemState.PENDING
            or (self.client.api == "web" and i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED))
        ]
        need = len(unpaid) * self.call.estimate()
        if not unpaid:
            return
        await self.client.check_call(self.call)  # option lists the service serves, before spending
        budget = self.spec.credit_budget
        if budget is not None and need > budget and self.spec.on_insufficient_credits == "fail":
            raise BudgetExceededError(
                f"the batch needs about {need:g} credits for {len(unpaid)} item(s), "
                f"over its budget of {budget:g}",
                hint="raise credit_budget, shrink the batch, or use on_insufficient_credits='partial'",
            )
        balance = await self.client.balance()
        if need > balance.available and self.spec.on_insufficient_credits == "fail":
            raise InsufficientCreditsError(
                f"the batch needs about {need:g} credits for {len(unpaid)} item(s); "
                f"the balance is {balance.available:g}",
                hint="top up, shrink the batch, or use on_insufficient_credits='partial'",
            )
        self.available = balance.available

    # --- running --------------------------------------------------------------------------------
    async def run(self) -> BatchResult:
        started = time.monotonic()
        work = await self.prepare()
        await self.preflight(work)
        # Jobs resumed from the manifest will be paid for in this run too: they count against the
        # budget. The Open API balance already excludes what they reserved, so add that back.
        resumed = (
            sum(1 for i in work if i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED))
            * self.call.estimate()
        )
        self.committed += resumed
        if self.client.api == "open":
            self.available += resumed
        stop_flusher = asyncio.Event()
        flusher = asyncio.create_task(self._flush_periodically(stop_flusher))
        try:
            coro = asyncio.gather(*(self.run_item(item) for item in work))
            if self.spec.timeout:
                try:
                    await asyncio.wait_for(coro, self.spec.timeout)
                except TimeoutError:
                    raise WaitTimeoutError(
                        f"the batch did not finish within {self.spec.timeout:g} s",
                        hint="rerun it to resume: submitted jobs are kept in the manifest",
                    ) from None
            else:
                await coro
        finally:
            stop_flusher.set()
            await flusher
            self.manifest.touch()
            await self.manifest.flush()
        items = [item_result(self.manifest.items[s]) for s in self.sources]
        return BatchResult(
            items,
            self.spent,
            time.monotonic() - started,
            self.manifest.url,
            self.stop_reason,
            self.client.request_counts,
        )

    async def _flush_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
            await self.manifest.flush()

    def finish_item(self, item: ManifestItem) -> None:
        self.manifest.touch()
        p = self.progress
        if item.state == ItemState.DONE:
            p.done += 1
        elif item.state == ItemState.FAILED or item.error:
            p.failed += 1
            if self.spec.on_failure == "fail_fast" and not self.stop_reason:
                self.stop_reason = f"fail_fast: {item.source} failed"
        elif item.state == ItemState.SKIPPED:
            p.skipped += 1
        p.credits_spent = self.spent
        p.last = ItemResult(item.source, item.state.value, item.output, item.job_id, item.credits, item.error)
        if self.on_progress is not None:
            self.on_progress(p)

    async def run_item(self, item: ManifestItem) -> None:
        await self.limit.acquire()
        try:
            await self._drive(item)
        except VanceError as exc:
            item.set(ItemState.FAILED, error=exc.message, error_code=str(exc.code or type(exc).__name__))
        except asyncio.CancelledError:
            raise
        finally:
            await self.limit.release()
            if item.state in (ItemState.DONE, ItemState.FAILED, ItemState.SKIPPED) or item.error:
                self.finish_item(item)

    async def _drive(self, item: ManifestItem) -> None:
        if item.state == ItemState.PENDING and not await self.submit_item(item):
            return
        job = await self._poll(item)
        if job.status is not JobStatus.SUCCEEDED:
            self.committed -= self.call.estimate()
            item.set(
                ItemState.FAILED,
                error=job.error_message or job.raw_status,
                error_code=str(job.error_code),
                job_failed=True,
            )
            if job.error_code == "insufficient_credits":
                self._stop("the account ran out of credits")
            return
        item.set(ItemState.SUCCEEDED)
        self.manifest.touch()
        if self.client.api == "web":  # it charges at download: the job id must be durable first
            await self.manifest.flush_until(self._recorded.get(item.source, 0))
        try:
            final = await self.client.download(
                job, item.output or "", storage_options=self.spec.storage_options
            )
        except VanceError as exc:
            # The job stays 'succeeded' with its id: a rerun downloads it again, it never resubmits
            # (the Open API charged at completion; the web API charges the first download only).
            if isinstance(exc, InsufficientCreditsError):  # web API: charged at download
                self._stop("the account ran out of credits")
            item.set(
                ItemState.SUCCEEDED,
                error=f"result not stored: {exc.message}; a rerun fetches it without paying again",
                error_code=str(exc.code or type(exc).__name__),
            )
            return
        cost = float(job.credits_charged) if job.credits_charged is not None else self.call.estimate()
        self.spent += cost
        self.committed -= self.call.estimate()
        item.set(
            ItemState.DONE,
            output=final,
            credits=cost,
            error=None,
            error_code=None,
            charges=[*item.charges, {"job_id": job.id, "credits": cost, "at": time.time()}],
        )
        self.limit.grow()

    def _stop(self, reason: str) -> None:
        if not self.stop_reason:
            self.stop_reason = reason
            log.warning("stopping submissions: %s", reason)

    async def submit_item(self, item: ManifestItem) -> bool:
        estimate = self.call.estimate()
        budget = self.spec.credit_budget
        if (
            not self.stop_reason
            and budget is not None
            and self.spent + self.committed + estimate > budget + 1e-9
        ):
            self._stop(f"the credit budget of {budget:g} is reached")
        if not self.stop_reason and self.spent + self.committed + estimate > self.available + 1e-9:
            self._stop("the balance would not cover more jobs")
        if self.stop_reason:
            item.set(ItemState.SKIPPED, error=f"not submitted: {self.stop_reason}")
            return False
        self.committed += estimate
        for _ in range(10):
            try:
                job = await self.client.submit(
                    item.source,
                    self.call,
                    idempotency_key=item.idempotency_key,
                    storage_options=self.spec.storage_options,
                )
                if job.status in (JobStatus.FAILED, JobStatus.CANCELED):
                    # The key replayed an older job that has ended badly: make a new submission.
                    item.generation += 1
                    item.idempotency_key = self._key(item)
                    continue
                break
            except ConcurrencyLimitedError:
                self.limit.shrink()
                await asyncio.sleep(1.0)
            except InsufficientCreditsError as exc:
                self.committed -= estimate
                self._stop("the account ran out of credits")
                item.set(ItemState.SKIPPED, error=f"not submitted: {exc.message}", error_code=str(exc.code))
                return False
            except VanceError:
                self.committed -= estimate
                raise
        else:
            self.committed -= estimate
            raise ConcurrencyLimitedError("the account's concurrency limit stayed full")
        item.set(ItemState.SUBMITTED, job_id=job.id)
        self._submitted_at[item.source] = time.monotonic()
        self._recorded[item.source] = self.manifest.touch()
        return True

    async def _poll(self, item: ManifestItem) -> Job:
        assert item.job_id
        if self.client.api == "visioncraft":  # answered in the submit request: nothing to wait for
            return await self.client.get_job(item.job_id)
        started = self._submitted_at.get(item.source, time.monotonic())
        # First look when jobs like this one usually finish; then back off.
        await asyncio.sleep(max(0.0, started + self.latency.value - time.monotonic()))
        # A job still running at the first look is usually nearly done: look again soon, then back off.
        interval = max(0.05, min(self.spec.poll_interval, self.latency.value) / 4)
        deadline = None if not self.spec.timeout else time.monotonic() + self.spec.timeout
        polls = 0
        while True:
            job = await self.client.get_job(item.job_id)
            polls += 1
            if job.status.terminal:
                if item.source in self._submitted_at:
                    self.latency.observe(time.monotonic() - started, first_poll_hit=polls == 1)
                return job
            if deadline and time.monotonic() > deadline:
                raise WaitTimeoutError(f"job {item.job_id} did not finish within {self.spec.timeout:g} s")
            await asyncio.sleep(interval)
            interval = min(self.spec.max_poll_interval, interval * 1.5)


def item_result(item: ManifestItem) -> ItemResult:
    """The caller's view of a manifest item; a job done but not stored counts as failed."""
    state = item.state.value
    if item.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED, ItemState.PENDING):
        state = ItemState.FAILED.value
    return ItemResult(
        item.source,
        state,
        item.output if item.state == ItemState.DONE else None,
        item.job_id,
        item.credits,
        item.error or ("not finished" if state == "failed" else None),
        item.error_code,
    )


async def run_batch(
    client: AsyncVanceClient, spec: BatchSpec, on_progress: Callable[[Progress], None] | None = None
) -> BatchResult:
    """Run (or resume) a batch; see the module docstring."""
    return await BatchRunner(client, spec, on_progress).run()
