"""The resumable batch engine: many jobs at once, within limits, paying nothing twice.

    result = await run_batch(client, BatchSpec(source="s3://in/", destination="s3://out/", tool="upscale",
                                               config={"scale": 4}))

1. List the inputs and name their outputs safely; refuse overwrites and collisions.
2. Read the manifest: skip what is done, resume jobs already submitted.
3. Check the whole batch's estimated credits (the tool's price per item) against the balance and
   the budget.
4. Check each input locally as it streams (a bad one fails alone, before it is paid for), then
   submit, poll and download with bounded concurrency; keep the manifest current. The first jobs
   run while later inputs are still being checked (``stream.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fsspec.core import url_to_fs

from ..api.errors import (
    BudgetExceededError,
    ConcurrencyLimitedError,
    InsufficientCreditsError,
    InvalidInputError,
    VanceError,
    WaitTimeoutError,
)
from ..api.idempotency import default_idempotency_key
from ..api.models import Job, JobStatus, credits_text
from ..inputs import InputInfo
from ..secrets import redact
from ..state.cache import CacheUnusableError, ResultCache
from ..state.lease import BatchLease, LeaseLostError, fence_writes
from ..state.manifest import ItemState, Manifest, ManifestItem
from ..state.storage import (
    SourceFile,
    check_no_overlap,
    check_outputs_apart,
    check_writable,
    is_engine_file,
    is_local,
    list_sources,
    storage_failure,
)
from .account_share import NOT_RESERVED, AccountShare
from .cached import serve_from_cache, store_in_cache
from .collect import fetch_of, paid_before, run_charges, with_charge
from .latency import AdaptiveLimit
from .ledger import CreditLedger
from .planning import (
    CHECK_CHUNK,
    CyclicGCPause,
    as_recorded,
    call_hash,
    check_inputs,
    check_inside,
    config_shown,
    list_outputs,
    plan_outputs,
    recognise_touched,
    refuse_overwrites,
    same_listing,
)
from .service import BatchClient
from .spec import BatchResult, BatchSpec, ItemResult, Progress
from .stream import stream_work
from .watch import JobWatch

log = logging.getLogger("vance_provider.batch")
STOP_GRACE = 10.0  # seconds a stopped batch still waits for the answer to a job's creation
# Seconds between writes of the manifest while it changes. On an object store each write is a
# request (a PUT's CPU and price): a batch of many jobs a second wrote three per photo. What a
# kill loses meanwhile costs nothing: a job's id is found again by its idempotency key, and a
# download waits for what must be durable before it (``flush_until``).
FLUSH_EVERY, FLUSH_EVERY_REMOTE = 0.5, 2.0
LEASE_RENEW_EVERY = 10.0  # seconds between renewals of an object-store lease


def manifest_for(spec: BatchSpec) -> Manifest:
    """The batch's manifest: ``spec.manifest``, or ``_vance_manifest.json`` in the destination."""
    if spec.manifest:
        return Manifest(spec.manifest, spec.storage_options)
    return Manifest.for_destination(spec.destination, spec.storage_options)


class BatchRunner:
    """Runs a batch. ``run()`` does it all; the stepwise methods (``prepare``, ``preflight``,
    ``submit_item``, ``run_item``, ``finish_item``, then ``close``) let a deferrable operator
    submit, hand the waiting to a trigger, and collect later."""

    def __init__(
        self, client: BatchClient, spec: BatchSpec, on_progress: Callable[[Progress], None] | None = None
    ) -> None:
        self.client, self.spec, self.on_progress = client, spec, on_progress
        self.call = client.tool_call(
            spec.tool, spec.config, output_format=spec.output_format, jconfig=spec.jconfig
        )
        self.manifest = manifest_for(spec)
        self.caps = client.capabilities
        # One lease per destination, whatever the manifest's path; the manifest is written only
        # while it is held, and every job created or paid for is fenced by it (see lease.py).
        self.lease = BatchLease.for_batch(
            spec.destination, spec.storage_options, scope=spec.lease_scope, owner=spec.owner
        )
        fence_writes(self.manifest, self.lease)
        self.limit = AdaptiveLimit(spec.max_concurrency)
        self.watch = JobWatch(spec, client.backend.gate, self.limit, self.caps.requests_per_job)
        self.stop_reason: str | None = None
        self.credits = CreditLedger(spec.credit_budget)
        self._ended_before: set[str] = set()  # Open API jobs of another run found ended: paid then
        self.progress = Progress(total=0)
        self.sources: list[str] = []
        self.ignored: list[tuple[str, str]] = []
        self._submitted_at: dict[str, float] = {}
        self._submissions = 0  # jobs this run created
        # Each checked input's size as its job's length goes by it: megapixels, a video's seconds.
        self._sizes_in_units: dict[str, float] = {}
        self._recorded: dict[str, int] = {}  # manifest change that recorded each item's job id
        self._budget_lock = asyncio.Lock()  # one video at a time until the service prices it
        self._canceled_over_budget: dict[str, str] = {}  # source -> why its running job was canceled
        self._uploads = asyncio.Semaphore(spec.max_concurrency)  # inputs uploaded ahead of a job slot
        self._downloads = asyncio.Semaphore(spec.max_concurrency)  # results being stored
        self._sizes: dict[str, int] = {}  # input sizes, from the listing
        self.cache = (
            ResultCache(spec.cache, spec.cache_storage_options or spec.storage_options)
            if spec.cache
            else None
        )
        self.credits_saved = 0.0
        self.run_id = spec.owner or uuid.uuid4().hex[:12]  # which run paid for a charge (credit report)
        # Slots and budgets shared with the account's other workers (client.backend.account None:
        # this process alone).
        self.account = AccountShare(client.backend.account, spec.account_budget, self.run_id)
        self._created_destination = False
        self._listed = False  # the sources were listed: a store failure after this is the destination's
        self.unchecked: set[str] = set()  # pending items whose inputs are checked as they stream
        # New inputs streamed: their items are made as the stream reaches them (_new_items), the
        # rest once the first job is created (_plan_whole); until then, the outputs planned.
        self.new_inputs: list[SourceFile] = []
        self._outputs: dict[str, str] = {}
        self._chash = call_hash(self.call)
        self._gc_pause: CyclicGCPause | None = None  # run(): the collector paused until the first job
        self._planned = 0  # the manifest change that holds the planned items (and output names)
        self._local_outputs = False

    @property
    def _cache_lookup(self) -> bool:
        """The result cache is looked up before jobs: inputs are then hashed at planning."""
        return self.cache is not None and not self.spec.force

    def estimate(self, item: ManifestItem) -> float:
        """What the item is expected to cost: the service's estimate once known, else ours."""
        return item.estimate if item.estimate is not None else self.call.estimate()

    # --- planning (nothing is uploaded or charged here) ----------------------------------------
    async def prepare(self, *, check: bool = True) -> list[ManifestItem]:
        """List, check and plan; take the batch's lease and read its manifest. Spends nothing.
        A store that cannot be reached is a :class:`StorageUnavailableError` (not the store's
        own exception). ``check=False``: image inputs are checked later, each before it is
        staged, as :meth:`run_window` streams them (see :mod:`.stream`); new inputs are not in
        the work returned, their items are made then too (:attr:`new_inputs`)."""
        try:
            with CyclicGCPause():
                return await self._prepare(check)
        except Exception as exc:
            first = self.spec.source if isinstance(self.spec.source, str) else self.spec.source[0]
            where = self.spec.destination if self._listed else first
            if (unreachable := storage_failure(exc, where)) is not None:
                raise unreachable from None
            raise

    async def _check_cache(self) -> None:
        """A cache the user asked for must be usable before anything is spent; an optional one
        that is not is left out of this run, with a warning."""
        if self.cache is None:
            return
        try:
            await asyncio.to_thread(self.cache.check_usable)
        except CacheUnusableError as exc:
            if not self.spec.cache_optional:
                raise
            log.warning("running without the result cache: %s", exc.message)
            self.cache = None

    async def _prepare(self, check: bool = True) -> list[ManifestItem]:
        spec, so = self.spec, self.spec.storage_options
        self._listed = False
        await asyncio.to_thread(check_no_overlap, spec.source, spec.destination, so)
        self.ignored = []
        sources = await asyncio.to_thread(list_sources, spec.source, None, so, self.ignored)
        self._listed = True
        if not sources and not spec.allow_empty:
            raise InvalidInputError(
                "no input files found (JPG, PNG, WEBP or video)",
                source=str(spec.source),
                hint="check the prefix or glob, or pass allow_empty=True",
            )
        dest_fs, dest_path = url_to_fs(spec.destination, **(so or {}))
        self._created_destination = is_local(dest_fs) and not await asyncio.to_thread(
            dest_fs.exists, dest_path
        )
        await asyncio.to_thread(check_writable, spec.destination, so)
        await self._check_cache()
        if not self.lease.held:
            await asyncio.to_thread(self.lease.acquire, spec.lock_timeout)
        try:
            return await self._plan(sources, dest_fs, dest_path, check)
        except BaseException:
            await self.close(undo_empty=True)
            raise

    async def _plan(
        self, sources: list[SourceFile], dest_fs: Any, dest_path: str, check: bool = True
    ) -> list[ManifestItem]:
        spec, so = self.spec, self.spec.storage_options
        if spec.fresh:
            archived = await asyncio.to_thread(self.manifest.archive)
            if archived:
                log.warning("starting the batch afresh: the old manifest is kept as %s", archived)
        await asyncio.to_thread(self.manifest.load)
        self.spec, sources = await asyncio.to_thread(as_recorded, spec, self.manifest, sources, self.ignored)
        if self.spec.destination != spec.destination:
            dest_fs, dest_path = url_to_fs(self.spec.destination, **(so or {}))
        spec = self.spec
        chash = self._chash
        self.manifest.check_identity(
            {
                "source": spec.source.rstrip("/") if isinstance(spec.source, str) else None,
                "destination": spec.destination.rstrip("/"),
                "tool": self.call.tool,
                "config": chash,
                "api": self.client.api,
            },
            shown={"config": config_shown(spec)},
        )
        self.manifest.check_outputs(spec.destination)  # a hand-edited manifest: refused before any spend
        if spec.lease_scope:  # so that a cancel from outside the run finds the batch's lease
            self.manifest.meta["lease_scope"] = spec.lease_scope
        own_outputs = {i.output for i in self.manifest.items.values() if i.output}
        await asyncio.to_thread(recognise_touched, self.manifest, sources, chash, so)
        outputs = plan_outputs(
            sources,
            spec.destination,
            self.call,
            {s: i.output for s, i in self.manifest.items.items() if i.output},
        )
        await asyncio.to_thread(check_outputs_apart, outputs, so)
        present = await asyncio.to_thread(list_outputs, dest_fs, dest_path)
        self.sources = [s.url for s in sources]
        self._sizes = {s.url: s.size for s in sources}
        work: list[ManifestItem] = []
        if not spec.overwrite:
            refuse_overwrites(sources, outputs, own_outputs, present, dest_fs)
        # Streamed: images, when a bad input need not stop the batch before its first job. Checked
        # here: a video (its price needs its duration, which the budget check reads); fail_fast
        # (nothing is submitted when any input is bad); with the result cache (it is looked up by
        # the input's hash, and a batch it serves whole asks nothing of the service).
        cached = self.cache is not None and not spec.force
        stream = not (check or self.call.media == "video" or spec.on_failure == "fail_fast" or cached)
        items, tool = self.manifest.items, self.call.tool
        new_inputs: list[SourceFile] = []
        self._outputs = outputs
        for src in sources:
            item = items.get(src.url)
            if item is None and stream:  # a new input, streamed: its item is made when it is reached
                new_inputs.append(src)
                continue
            if item is None:  # a new input: most of a first run's, so it goes first
                item = self._new_item(src)
            elif not (same_listing(item, src) and item.call == chash) or (
                spec.force and item.state == ItemState.DONE
            ):
                items[src.url] = item = ManifestItem.new(
                    src.url,
                    src.fingerprint,
                    chash,
                    output=outputs[src.url],
                    generation=item.generation + 1,
                    tool=tool,
                )
            elif (
                item.state == ItemState.DONE
                and item.output
                and dest_fs._strip_protocol(item.output) in present
            ):
                self.progress.done += 1  # counted, so the progress reaches the total on a rerun
                continue  # done before, output still there: nothing to do, nothing to pay
            elif item.state in (ItemState.FAILED, ItemState.SKIPPED, ItemState.DONE):
                # A job that failed on the service is refunded: retry it as a new submission. After
                # any other failure (say, a lost answer) the same key finds the same job again.
                item.settle(ItemState.PENDING, job_id=None, generation=item.generation + item.job_failed)
            work.append(item)
        self.progress.total = len(sources)
        self._local_outputs = is_local(dest_fs)
        pending = [i for i in work if i.state == ItemState.PENDING]
        # The planned items (their output names: this batch's own) are durable before anything is
        # written into the destination (``_collect`` waits for this change, or for the one of
        # _plan_whole), not before the first job: a job whose id is lost in a kill is found again
        # by its idempotency key.
        self._planned = self.manifest.touch()
        if stream:
            self.unchecked, self.new_inputs = {i.source for i in pending}, new_inputs
        else:
            self._outputs = {}
            ready = await self.check_items(pending)
            served = {i.source for i in pending} - {i.source for i in ready}
            work = [i for i in work if i.source not in served]
        return work

    def _new_item(self, src: SourceFile) -> ManifestItem:
        """A new input's item in the manifest, under its planned output name."""
        self.manifest.items[src.url] = item = ManifestItem.new(
            src.url,
            src.fingerprint,
            self._chash,
            output=self._outputs[src.url],
            generation=0,
            tool=self.call.tool,
        )
        return item

    def _new_items(self, new_inputs: list[SourceFile]) -> Iterator[ManifestItem]:
        """The items of ``new_inputs``, each made as the stream reaches it (or found, once
        :meth:`_plan_whole` has made the rest); the plan is whole once all are."""
        for src in new_inputs:
            yield self.manifest.items.get(src.url) or self._new_item(src)
        self._plan_whole()

    def _plan_whole(self) -> None:
        """Once the first job is created (or the stream has ended), the new inputs not reached
        yet get their items: the manifest's next write holds the whole plan, and a download waits
        for it (:meth:`_collect`); then the cyclic collector paused by :meth:`run` runs again."""
        if self.new_inputs:
            for src in self.new_inputs:
                if src.url not in self.manifest.items:
                    self._new_item(src)
            self.new_inputs, self._outputs = [], {}
            self._planned = self.manifest.touch()
        if self._gc_pause is not None:
            self._gc_pause.resume()

    async def check_items(self, pending: list[ManifestItem]) -> list[ManifestItem]:
        """Check pending items' inputs (CHECK_CHUNK at a time: a Ctrl-C waits for one chunk at
        most), fail the bad ones (each alone), serve what the result cache holds; returns the
        items still to submit. Spends nothing."""
        ready: list[ManifestItem] = []
        for at in range(0, len(pending), CHECK_CHUNK):
            ready += await self._check_chunk(pending[at : at + CHECK_CHUNK])
        return ready

    async def _check_chunk(self, chunk: list[ManifestItem]) -> list[ManifestItem]:
        spec, so = self.spec, self.spec.storage_options
        checked: list[InputInfo | Exception] = await asyncio.to_thread(
            check_inputs,
            # Inputs are read whole here only when the result cache needs their SHA-256 before a
            # job; else by their header, and hashed by the upload (_submit_within_budget).
            [(i.source, self._sizes[i.source], i.input_sha256 is None and self._cache_lookup) for i in chunk],
            self.call.media,
            self.client.api,
            so,
            [i.output or "" for i in chunk] if self._local_outputs else None,
        )
        ready: list[ManifestItem] = []
        for item, info in zip(chunk, checked, strict=True):
            self.unchecked.discard(item.source)
            if isinstance(info, Exception):  # whatever went wrong with this one input: it alone fails
                self._fail_early(item, info)
                continue
            item.estimate = self.call.estimate(info.duration) if info.media == "video" else None
            if (units := info.job_size) is not None:
                self._sizes_in_units[item.source] = units
            item.media_info = (
                {"source_width": info.width, "source_height": info.height, "duration": info.duration}
                if info.media == "video" and info.width and info.height and info.duration
                else None
            )
            item.idempotency_key = self._key(item)
            item.input_sha256 = item.input_sha256 or info.sha256
            ready.append(item)
        self.manifest.touch()
        if self.cache is not None and not spec.force and ready:
            ready, saved = await serve_from_cache(
                self.cache,
                self.call,
                ready,
                so,
                spec.max_concurrency,
                lambda item: check_inside(item, self.spec.destination),
            )
            self.credits_saved += sum(saved)
            self.progress.done += len(saved)
            if saved:
                self.manifest.touch()
        return ready

    def _fail_early(self, item: ManifestItem, exc: Exception) -> None:
        if isinstance(exc, VanceError):
            error = exc.message + (f" ({exc.hint})" if exc.hint else "")
        else:
            error = f"{item.source}: {describe_unexpected(exc)}"
        item.set(ItemState.FAILED, error=error, error_code=type(exc).__name__)
        log.warning("skipping input that fails its checks: %s", error)
        self.progress.failed += 1
        if self.spec.on_failure == "fail_fast" and not self.stop_reason:
            self.stop_reason = f"fail_fast: {item.source} failed"

    def _key(self, item: ManifestItem) -> str:
        # Scoped to this manifest: another batch of the same input is another logical submission.
        return default_idempotency_key(
            item.source, item.fingerprint, self.call, item.generation, scope=self.manifest.url
        )

    def unpaid(self, work: list[ManifestItem]) -> list[ManifestItem]:
        return [
            i
            for i in work
            if i.state == ItemState.PENDING
            or (self.caps.charges_on_download and i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED))
        ]

    async def preflight(self, work: list[ManifestItem]) -> None:
        """The whole batch's estimate against the balance and the budget, before spending."""
        unpaid = self.unpaid(work)
        count = len(unpaid) + len(self.new_inputs)
        if not count:
            return
        # New inputs streamed have no items yet: each is counted at the tool's price.
        need = sum(self.estimate(i) for i in unpaid) + len(self.new_inputs) * self.call.estimate()
        await self.client.check_call(self.call)  # option lists the service serves, before spending
        budget = self.spec.credit_budget
        if budget is not None and need > budget and self.spec.on_insufficient_credits == "fail":
            raise BudgetExceededError(
                f"the batch needs about {credits_text(need)} credits for {count} item(s), "
                f"over its budget of {credits_text(budget)}",
                hint="raise credit_budget, shrink the batch, or use on_insufficient_credits='partial'",
            )
        await self.account.check_budget(need, count, partial=self.spec.on_insufficient_credits != "fail")
        balance = await self.client.balance()
        if need > balance.available and self.spec.on_insufficient_credits == "fail":
            raise InsufficientCreditsError(
                f"the batch needs about {credits_text(need)} credits for {count} item(s); "
                f"the balance is {credits_text(balance.available)}",
                hint="top up, shrink the batch, or use on_insufficient_credits='partial'",
            )
        self.credits.available = balance.available

    # --- running --------------------------------------------------------------------------------
    async def run(self) -> BatchResult:
        started = time.monotonic()
        # The collector stays paused from the planning on until the first job (_plan_whole).
        with CyclicGCPause() as self._gc_pause:
            return await self.run_window(await self.start(stream=True), started)

    async def start(self, *, stream: bool = False) -> list[ManifestItem]:
        """``prepare()``, ``preflight()`` (a refused batch leaves no empty files behind), and the
        jobs resumed from the manifest counted against the budget: how ``run()`` and a hand-off begin.
        ``stream``: image inputs are checked, and new inputs' items made, as :meth:`run_window`
        reaches them, not here (the budget check counts each at the tool's price). The caller
        ``close()``s the runner."""
        work = await self.prepare(check=not stream)
        try:
            await self.preflight(work)
        except BaseException:
            await self.close(undo_empty=True)
            raise
        # Jobs resumed from the manifest will be paid for in this run too: they count against the
        # budget. The Open API balance already excludes what they reserved, so add that back.
        self.count_in_flight(work)
        return work

    # --- a batch handed from one process to another (prepare here, run the window there) --------
    # The worker: start() -> submit_ahead() -> close().
    # The other process (an Airflow trigger): resume() -> run_window(). The manifest is the only
    # state that travels: run_window() can be interrupted (a triggerer restart) and resumed again.
    def count_in_flight(self, work: list[ManifestItem]) -> None:
        """Count the jobs already on the service (resumed from the manifest) against the budget.
        The Open API balance already excludes what they reserved: that is added back."""
        resumed = sum(self.estimate(i) for i in work if i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED))
        self.credits.resumed(resumed, reserved_by_service=self.caps.reserves_credits)

    async def submit_ahead(self, work: list[ManifestItem], limit: int | None = None) -> list[ManifestItem]:
        """Submit up to ``limit`` (default: ``max_concurrency``, less the jobs already in flight)
        pending items at once, within the budget and the balance, and write the manifest: their
        jobs run while the batch is handed on. Returns the items submitted."""
        in_flight = sum(1 for i in work if i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED))
        room = max(0, (limit or self.spec.max_concurrency) - in_flight)
        chosen = [i for i in work if i.state == ItemState.PENDING][:room]

        async def one(item: ManifestItem) -> None:
            try:
                await self.submit_item(item)
            except VanceError as exc:
                item.set(ItemState.FAILED, error=exc.message, error_code=str(exc.code or type(exc).__name__))
            if item.state in (ItemState.FAILED, ItemState.SKIPPED):
                self.finish_item(item)

        await asyncio.gather(*(one(i) for i in chosen))
        self.manifest.touch()
        await self.manifest.flush()
        return [i for i in chosen if i.state == ItemState.SUBMITTED]

    async def resume(self) -> list[ManifestItem]:
        """Pick up a batch that :meth:`prepare` planned, possibly in another process, from its
        manifest alone: take the lease (or re-enter it: same ``spec.owner``), read the manifest,
        list the inputs once (their sizes, and which items belong to this run), and return this
        run's unfinished items (pending, submitted, succeeded). Inputs are not checked again, and
        what this run has failed or skipped stays so. The credits this run already paid (its
        charges in the manifest) count against the budget, the jobs in flight are committed, and
        the balance is read once. Spends nothing; follow with :meth:`run_window`."""
        spec, so = self.spec, self.spec.storage_options
        if not self.lease.held:
            await asyncio.to_thread(self.lease.acquire, spec.lock_timeout)
        try:
            await asyncio.to_thread(self.manifest.load)
            self.manifest.check_outputs(spec.destination)
            self.ignored = []
            listed = await asyncio.to_thread(list_sources, spec.source, None, so, self.ignored)
            chash = call_hash(self.call)
            self.sources, self._sizes, work = [], {}, []
            p = self.progress
            for src in listed:
                item = self.manifest.items.get(src.url)
                if item is None or item.call != chash or not same_listing(item, src):
                    continue  # new or changed since the batch was prepared: the next run's work
                self.sources.append(src.url)
                self._sizes[src.url] = src.size
                if item.state in (ItemState.PENDING, ItemState.SUBMITTED, ItemState.SUCCEEDED):
                    if item.state == ItemState.PENDING and not item.idempotency_key:
                        item.idempotency_key = self._key(item)  # requeued after a cancel
                    work.append(item)
                elif item.state == ItemState.DONE:
                    p.done += 1
                elif item.state == ItemState.SKIPPED:
                    p.skipped += 1
                    self._stop((item.error or "stopped").removeprefix("not submitted: "))
                else:
                    p.failed += 1
                    if spec.on_failure == "fail_fast":
                        self._stop(f"fail_fast: {item.source} failed")
            p.total = len(self.sources)
            if spec.owner:  # a run named by its owner: the charges it made before are its spend
                self.credits.spent, self.credits.taken_over = run_charges(
                    [self.manifest.items[s] for s in self.sources], self.run_id
                )
            if any(i.state == ItemState.PENDING for i in work) and not self.stop_reason:
                # The balance read now excludes what this run has paid: the budget check counts it.
                self.credits.available = (await self.client.balance()).available + self.credits.spent
            self.count_in_flight(work)
            for item in work:  # credits a process before this one set aside for jobs in flight
                if item.reservation and item.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED):
                    await self.account.take_over(item.source, item.reservation)
            return work
        except BaseException:
            await self.close()
            raise

    async def run_window(self, work: list[ManifestItem], started: float | None = None) -> BatchResult:
        """Run prepared or resumed work to its end: a sliding window of ``max_concurrency`` jobs
        (a finished job's slot goes to the next item at once), the manifest kept current. Releases
        the lease, also when interrupted; the manifest then holds every job id for a resume.
        ``started`` (``time.monotonic()``): when the batch began, for its elapsed time."""
        started = time.monotonic() if started is None else started
        try:
            if not (self.unchecked or self.new_inputs):  # streamed: the periodic flush writes the plan
                await self.manifest.flush()
            await self._run_all(work)
        finally:
            await self.close()
        return self.result(time.monotonic() - started)

    def result(self, elapsed: float = 0.0) -> BatchResult:
        """The batch's result as the manifest has it now, for the inputs of this run."""
        items = [item_result(self.manifest.items[s]) for s in self.sources]
        return BatchResult(
            items,
            self.credits.spent,
            elapsed,
            self.manifest.url,
            self.stop_reason,
            self.client.request_counts,
            list(self.ignored),
            self.credits_saved,
            self.credits.taken_over,
        )

    async def _run_all(self, work: list[ManifestItem]) -> None:
        """Every item at once within the limits; when one task ends the batch (Ctrl-C, a timeout,
        a bug), the TaskGroup cancels its siblings, and the manifest is written before we return."""
        stop_flusher = asyncio.Event()
        flusher = asyncio.create_task(self._flush_periodically(stop_flusher))
        # A 429 "concurrency limit" anywhere in the client shrinks this batch's own limit at once.
        listeners = self.client.backend.gate.on_concurrency_limit
        listeners.append(self.limit.shrink)
        try:
            async with asyncio.timeout(self.spec.timeout), asyncio.TaskGroup() as group:
                group.create_task(
                    stream_work(
                        work,
                        self.unchecked,
                        self._new_items(self.new_inputs),
                        self._check_chunk,
                        lambda item: group.create_task(self.run_item(item)),
                        lambda: self.stop_reason is not None,
                        self._skip_unchecked,
                        ahead=2 * CHECK_CHUNK + 4 * self.spec.max_concurrency,
                    )
                )
        except TimeoutError:
            raise WaitTimeoutError(
                f"the batch did not finish within {credits_text(self.spec.timeout or 0.0)} s",
                hint="rerun it to resume: submitted jobs are kept in the manifest",
            ) from None
        finally:
            listeners.remove(self.limit.shrink)
            stop_flusher.set()
            await asyncio.shield(flusher)
            self._plan_whole()  # stopped before the first job: the plan is written whole all the same
            self.manifest.touch()
            await asyncio.shield(self.manifest.flush(compact=True))

    async def close(self, *, undo_empty: bool = False) -> None:
        """Release the batch's lease. ``undo_empty``: nothing was submitted, so leave no trace of
        this run (a destination folder it created, holding only its own files, is removed)."""
        await asyncio.to_thread(self.lease.release)
        if undo_empty and self._created_destination:
            await asyncio.to_thread(_remove_if_only_engine_files, self.spec.destination)

    @functools.cached_property
    def manifest_local(self) -> bool:
        """Whether the manifest is on local disk (a write there is cheap)."""
        return is_local(url_to_fs(self.manifest.url, **(self.manifest.storage_options or {}))[0])

    async def _flush_periodically(self, stop: asyncio.Event) -> None:
        every = FLUSH_EVERY if self.manifest_local else FLUSH_EVERY_REMOTE
        renewed = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):  # (not wait_for: it can swallow a cancel)
                async with asyncio.timeout(every):
                    await stop.wait()
            # Streamed: not before the first job (nor before the plan is whole: _plan_whole).
            if not (self.new_inputs or (self.unchecked and not self._submissions)):
                await self.manifest.flush()
            if time.monotonic() - renewed >= LEASE_RENEW_EVERY:  # an object-store lease
                renewed = time.monotonic()
                try:
                    await asyncio.to_thread(self.lease.heartbeat)
                except VanceError as exc:
                    self._stop(str(exc))

    def _skip_unchecked(self, item: ManifestItem) -> None:
        """The batch stopped before this input was checked: it is skipped (never staged)."""
        self.unchecked.discard(item.source)
        if not self._refuse(item):
            item.set(ItemState.SKIPPED, error=f"not submitted: {self.stop_reason}")
        self.finish_item(item)

    def finish_item(self, item: ManifestItem) -> None:
        self.manifest.touch()
        # Its jobs get no more looks, nor downloads, in this run: what was kept for them goes.
        for kept in (self._sizes_in_units, self._submitted_at, self._recorded):
            kept.pop(item.source, None)
        self._ended_before.discard(item.source)
        p = self.progress
        if item.state == ItemState.DONE:
            p.done += 1
        elif item.state == ItemState.FAILED or item.error:
            p.failed += 1
            if self.spec.on_failure == "fail_fast" and not self.stop_reason:
                self.stop_reason = f"fail_fast: {item.source} failed"
        elif item.state == ItemState.SKIPPED:
            p.skipped += 1
        p.credits_spent = self.credits.spent
        p.last = ItemResult(item.source, item.state.value, item.output, item.job_id, item.credits, item.error)
        if self.on_progress is not None:
            self.on_progress(p)

    async def run_item(self, item: ManifestItem) -> None:
        """Drive one item to its end. A job slot is held only while the job exists on the service:
        the upload goes first (within a bounded look-ahead), the download after (in its own pool)."""
        job: Job | None = None
        try:
            staged: str | None = None
            if item.state == ItemState.PENDING:
                if self._refuse(item):
                    return
                async with self._uploads:  # at most max_concurrency inputs uploaded ahead
                    staged = await self._stage(item)
                    await self.limit.acquire()
            else:
                await self.limit.acquire()
            try:
                async with self.account.slot():
                    if item.state == ItemState.PENDING and not await self._submit(item, staged):
                        return
                    job = await self._await_terminal(item)
            finally:
                self.limit.release()
            if job is not None:
                async with self._downloads:
                    await self._collect(item, job)
        except VanceError as exc:
            state = ItemState.SUCCEEDED if item.state == ItemState.SUCCEEDED else ItemState.FAILED
            item.set(state, error=exc.message, error_code=str(exc.code or type(exc).__name__))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # storage, decoding, an unexpected answer: this item fails, not the batch
            log.warning("%s failed: %s", item.source, describe_unexpected(exc), exc_info=True)
            state = ItemState.SUCCEEDED if item.state == ItemState.SUCCEEDED else ItemState.FAILED
            item.set(state, error=f"{item.source}: {describe_unexpected(exc)}", error_code=type(exc).__name__)
        finally:
            if item.state in (ItemState.DONE, ItemState.FAILED, ItemState.SKIPPED) or item.error:
                self.finish_item(item)

    async def _stage(self, item: ManifestItem) -> str | None:
        size = self._sizes.get(item.source, 0)
        return await self.client.stage(
            item.source, size, self.call, storage_options=self.spec.storage_options
        )

    async def _look_at_video(self, item: ManifestItem, job_id: str) -> Job:
        """One look at a video job. The service measures the video itself (never trusting its
        header) and shows the authoritative charge (``credits_charged``, reserved) once the job is
        processing: that figure replaces every estimate at once, and a job it puts over the budget
        is canceled (the reservation is refunded in full)."""
        job = await self.client.get_job(job_id)
        if job.status.terminal or not job.credits_charged or float(job.credits_charged) <= 0:
            return job
        figure = float(job.credits_charged)
        if figure != self.estimate(item):
            self.credits.reprice(self.estimate(item), figure)
            item.estimate = figure
            self.manifest.touch()
        if not self.credits.over_budget() or not self.caps.can_cancel:
            return job
        why = await self._cancel_for_budget(item, job)
        if why is None:
            return job
        self._canceled_over_budget[item.source] = (
            f"not submitted: {why} (the service measured the video at {credits_text(figure)} "
            "credits; the job was canceled, not charged)"
        )
        return dataclasses.replace(job, status=JobStatus.CANCELED, raw_status="canceled")

    async def _await_terminal(self, item: ManifestItem) -> Job | None:
        """Poll until the job ends; a failed job is recorded here (refunded), a good one returned."""
        job = await self._poll(item)
        if item.job_id != job.id:  # the batch was stopped meanwhile: its job canceled, it is pending again
            await self._give_back(item, self.estimate(item))
            return None
        if (why := self._canceled_over_budget.pop(item.source, None)) is not None:
            self._skip_canceled(item, why)
            return None
        if job.status is not JobStatus.SUCCEEDED:
            await self._give_back(item, self.estimate(item))
            item.set(
                ItemState.FAILED,
                error=job.error_message or job.raw_status,
                error_code=str(job.error_code),
                job_failed=True,
            )
            if job.error_code == "insufficient_credits":
                self._stop("the account ran out of credits")
            return None
        item.set(ItemState.SUCCEEDED)
        self.manifest.touch()
        return job

    async def _collect(self, item: ManifestItem, job: Job) -> None:
        """Store a succeeded job's result under the item's output name and record what it cost."""
        await self.manifest.flush_until(self._planned)  # the batch's own output names are durable
        if self.caps.charges_on_download:  # the job id must be durable before anything is paid
            await self.manifest.flush_until(self._recorded.get(item.source, 0))
        await self._fence()  # a download is a payment (web API) and a write into the destination
        check_inside(item, self.spec.destination)
        earlier = paid_before(
            item, job.id, self.caps.charges_on_download, self.run_id, item.source in self._ended_before
        )
        if self.caps.charges_on_download and earlier is None and not fetch_of(item, job.id):
            # The download is the payment: say so durably before it starts, so that a run taking
            # this job over after a crash knows it may have been paid for already.
            item.fetch = {"job_id": job.id, "run": self.run_id, "at": time.time()}
            await self.manifest.flush_until(self.manifest.touch())  # fenced, as every write
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
        cost = float(job.credits_charged) if job.credits_charged is not None else self.estimate(item)
        self.credits.charge(self.estimate(item), cost, taken_over=earlier is not None)
        await self.account.settle(item.source, cost, paid_here=earlier is None)
        if earlier is not None:
            log.info(
                "%s: job %s was paid for before this run took it over (%s credits); not counted again",
                item.source,
                job.id,
                credits_text(cost),
            )
        charges = with_charge(item.charges, job.id, cost, self.run_id, earlier)
        item.settle(ItemState.DONE, output=final, credits=cost, charges=charges, reservation=None)
        self.limit.grow()
        if self.cache is not None:
            await store_in_cache(
                self.cache,
                self.call,
                item,
                job.id,
                final,
                cost,
                self.spec.storage_options,
                self._sizes.get(item.source),
            )

    async def _fence(self) -> None:
        """Stop before paying for anything once another run has taken the batch's lease."""
        try:
            if self.lease.local:  # two stat calls: not worth a thread hop per job
                self.lease.fence()
            else:
                await asyncio.to_thread(self.lease.fence)
        except LeaseLostError as exc:
            self._stop(exc.message)
            raise

    def _stop(self, reason: str) -> None:
        if not self.stop_reason:
            self.stop_reason = reason
            log.warning("stopping submissions: %s", reason)

    async def submit_item(self, item: ManifestItem) -> bool:
        """Upload and submit one pending item within the budget; ``False`` if it was not submitted."""
        if self._refuse(item):
            return False
        return await self._submit(item, await self._stage(item))

    def _refuse(self, item: ManifestItem) -> bool:
        """Mark the item skipped if the budget, the balance or a stop forbids another job."""
        if not self.stop_reason and (why := self.credits.refusal(self.estimate(item))):
            self._stop(why)
        if self.stop_reason:
            item.set(ItemState.SKIPPED, error=f"not submitted: {self.stop_reason}")
            return True
        return False

    async def _submit(self, item: ManifestItem, staged: str | None) -> bool:
        if item.estimate is not None and self.spec.credit_budget is not None:
            # A video's true price is known only once the service has seen it: submit them one at
            # a time, so the budget is never exceeded by more than one job's cost.
            async with self._budget_lock:
                return await self._submit_within_budget(item, staged)
        return await self._submit_within_budget(item, staged)

    async def _submit_within_budget(self, item: ManifestItem, staged: str | None) -> bool:
        if self._refuse(item):  # checked again: other jobs may have been committed meanwhile
            return False
        estimate = self.estimate(item)
        try:
            await self.account.reserve(item.source, estimate)
        except NOT_RESERVED as exc:
            self._stop(exc.message)
            item.set(ItemState.SKIPPED, error=f"not submitted: {exc.message}", error_code=type(exc).__name__)
            return False
        item.reservation = self.account.record(item.source)
        self.credits.commit(estimate)
        call = self.call
        if item.media_info and call.open_tool:  # lets the service price the video before it runs
            call = dataclasses.replace(call, open_config={**(call.open_config or {}), **item.media_info})
        for _ in range(10):
            try:
                await self._fence()
                job = await self._answer_kept(
                    item,
                    self.client.submit_checked(
                        item.source,
                        self._sizes.get(item.source, 0),
                        call,
                        idempotency_key=item.idempotency_key,
                        storage_options=self.spec.storage_options,
                        staged=staged,
                    ),
                )
                if job.status in (JobStatus.FAILED, JobStatus.CANCELED):
                    # The key replayed an older job that has ended badly: make a new submission.
                    item.generation += 1
                    item.idempotency_key = self._key(item)
                    continue
                break
            except ConcurrencyLimitedError:
                # The client waited out the account's concurrency limit until its deadline.
                await self._give_back(item, estimate)
                raise
            except InsufficientCreditsError as exc:
                await self._give_back(item, estimate)
                self._stop("the account ran out of credits")
                item.set(ItemState.SKIPPED, error=f"not submitted: {exc.message}", error_code=str(exc.code))
                return False
            except BaseException:
                if item.state != ItemState.SUBMITTED:  # not a job kept by _answer_kept
                    await asyncio.shield(self._give_back(item, estimate))
                raise
        else:
            await self._give_back(item, estimate)
            raise VanceError("the service kept answering with ended jobs for new submissions")
        # The SHA-256 of the bytes the upload read (a file touched later, same bytes, is then
        # recognised as the same input and costs nothing; the result cache keys on it).
        uploaded = self.client.backend.uploaded_sha256(item.source)
        item.input_sha256 = item.input_sha256 or uploaded
        item.set(ItemState.SUBMITTED, job_id=job.id, submitted_by=self.run_id)
        self._plan_whole()  # at the first job; nothing to do after it
        if job.status is JobStatus.SUCCEEDED and not self.caps.charges_on_download:
            # The key replayed a job that had already ended, so it was paid for at its end, by
            # the run that created it (which did not live to record it).
            self._ended_before.add(item.source)
        self._submitted_at[item.source] = time.monotonic()
        self._submissions += 1
        self._recorded[item.source] = self.manifest.touch()
        if item.estimate is not None and job.credits_estimated:  # the service's price replaces ours
            self.credits.reprice(estimate, float(job.credits_estimated))
            item.estimate = float(job.credits_estimated)
            if self.credits.over_budget():
                await self._cancel_over_budget(item, job)
        # Canceled over the budget just now: skipped, with no job left to wait for.
        return item.state == ItemState.SUBMITTED

    async def _answer_kept(self, item: ManifestItem, submission: Coroutine[Any, Any, Job]) -> Job:
        """The submission's answer. Stopped meanwhile (a timeout, a kill, Ctrl-C), the job may exist
        already: its answer is awaited a little longer (``STOP_GRACE``), so that its id reaches the
        manifest and a stop can cancel it, before the stop goes on."""
        sent = asyncio.ensure_future(submission)
        try:
            return await asyncio.shield(sent)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                job = await asyncio.wait_for(sent, STOP_GRACE)
                if job.status not in (JobStatus.FAILED, JobStatus.CANCELED):
                    item.set(ItemState.SUBMITTED, job_id=job.id, submitted_by=self.run_id)
                    self.manifest.touch()
            raise

    async def _cancel_for_budget(self, item: ManifestItem, job: Job) -> str | None:
        """Stop submitting and cancel ``item``'s ``job`` (refunded in full); why, or None if it
        could not be canceled (it runs and is paid: the budget is exceeded by this one job at most).
        Its credits are released before the cancel goes: meanwhile, the looks at the other jobs
        must not find the budget passed by this one and cancel themselves too."""
        why = self.credits.budget_reached()
        self._stop(why)
        self.credits.release(self.estimate(item))
        try:
            await self.client.cancel(job.id)
        except VanceError as exc:
            log.warning("could not cancel job %s over the budget: %s", job.id, exc)
            self.credits.commit(self.estimate(item))  # it runs, and will be paid
            return None
        return why

    def _skip_canceled(self, item: ManifestItem, error: str) -> None:
        """A job canceled over the budget (its credits already released by
        :meth:`_cancel_for_budget`): its item is skipped, and a later run submits it anew."""
        self.account.release_soon(item.source)
        item.set(ItemState.SKIPPED, job_id=None, error=error, reservation=None)
        item.generation += 1
        item.idempotency_key = self._key(item)
        self._submitted_at.pop(item.source, None)

    async def _cancel_over_budget(self, item: ManifestItem, job: Job) -> None:
        """The service priced the job over what the budget has left: cancel it (refunded in full)."""
        why = await self._cancel_for_budget(item, job)
        if why is not None:
            self._skip_canceled(item, f"not submitted: {why} (the job was canceled, not charged)")

    async def _give_back(self, item: ManifestItem, estimate: float) -> None:
        """The item's job was not created, or failed (refunded): its credits are free again."""
        self.credits.release(estimate)
        await self.account.release(item.source)
        item.reservation = None

    async def adopt_running(self, work: list[ManifestItem]) -> None:
        """Before a hand-off: another run's jobs still running become this run's (recorded in the
        manifest), so the process that collects them for this run counts their charge as this
        run's spend; a job that had already ended stays another run's (see :func:`.collect.paid_before`)."""
        if self.caps.charges_on_download or self.caps.answers_on_submit:
            return
        for item in work:
            if item.state != ItemState.SUBMITTED or not item.job_id or item.submitted_by == self.run_id:
                continue
            if item.source in self._submitted_at:
                continue
            job = await self.client.get_job(item.job_id)
            if not job.status.terminal:
                item.submitted_by = self.run_id
                self.manifest.touch()

    async def _poll(self, item: ManifestItem) -> Job:
        assert item.job_id
        if self.caps.answers_on_submit:  # the result came with the submission: nothing to wait for
            return await self.client.get_job(item.job_id)
        if (
            not self.caps.charges_on_download
            and item.submitted_by != self.run_id
            and item.source not in self._submitted_at
        ):
            # Another run's job (taken over): one look at once tells whether it ended, and so was
            # paid for, before this run came; a job still running is paid for during this run.
            first = await self.client.get_job(item.job_id)
            if first.status.terminal:
                if first.status is JobStatus.SUCCEEDED:
                    self._ended_before.add(item.source)
                return first
        video = item.estimate is not None  # its true price is known once the service measured it
        return await self.watch.wait(
            functools.partial(self._look_at_video, item) if video else self.client.get_job,
            item.job_id,
            self._submitted_at.get(item.source, time.monotonic()),
            video=video,
            timed=item.source in self._submitted_at,
            size=self._sizes_in_units.get(item.source),
        )


def describe_unexpected(exc: BaseException) -> str:
    text = redact(str(exc)) if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _remove_if_only_engine_files(destination: str) -> None:
    """Remove a local destination this run created, when it holds nothing but engine files."""
    path = url_to_fs(destination)[1]
    try:
        names = os.listdir(path)
        if all(is_engine_file(n) for n in names):
            for n in names:
                os.remove(os.path.join(path, n))
            os.rmdir(path)
    except OSError:
        pass


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
        item.cached and item.state == ItemState.DONE,
    )


async def run_batch(
    client: BatchClient, spec: BatchSpec, on_progress: Callable[[Progress], None] | None = None
) -> BatchResult:
    """Run (or resume) a batch; see the module docstring."""
    return await BatchRunner(client, spec, on_progress).run()
