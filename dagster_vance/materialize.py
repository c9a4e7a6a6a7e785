"""What materializing an enhanced dataset does: run (or resume) its batch, then yield its
``MaterializeResult`` and check results; or, with only the checks selected, check it from its
manifest without paying anything.

The resource calls :func:`materialize` (:meth:`VanceAIResource.materialize_dataset`); this module
knows the resource only by the few verbs it uses (:class:`Account`), so it never imports it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
from pydantic import Field

from vance_provider.core import BatchResult, BatchSpec, Progress, ToolCall, resolve
from vance_provider.core.api.errors import PERMANENT_ERRORS, VanceError
from vance_provider.core.api.models import Balance
from vance_provider.core.batch.spec import ItemResult
from vance_provider.core.reports.preview import pairs_of, write_contact_sheet
from vance_provider.core.secrets import redact
from vance_provider.core.state.lease import new_owner
from vance_provider.core.state.manifest import ItemState, Manifest
from vance_provider.core.state.storage import join, list_sources, safe_name

from .checks import (
    accounted_check,
    budget_check,
    items_from_manifests,
    outputs_check,
    preview_table,
    verify_outputs,
)
from .shards import read_partition_shard, shard_of_key
from .translator import (
    CHECK_ACCOUNTED,
    CHECK_BUDGET,
    CHECK_OUTPUTS,
    VanceDatasetProps,
    location_metadata,
    strip_query,
)


class VanceRunConfig(dg.Config):
    """Per-run options of an enhanced dataset (the launchpad shows them)."""

    force: bool = Field(default=False, description="Process every input again, even those done (pays again).")
    credit_budget: float | None = Field(
        default=None, description="This run's credit budget, instead of the asset's."
    )


class Account(Protocol):
    """What a materialization asks of the VanceAI resource."""

    @property
    def previews(self) -> bool: ...

    @property
    def api_name(self) -> str: ...

    def balance(self) -> Balance: ...

    def run_batch(
        self, spec: BatchSpec, on_progress: Any = None, *, manifest_url: str | None = None
    ) -> BatchResult: ...


def _target(
    context: dg.AssetExecutionContext,
    props: VanceDatasetProps,
    partition_key: str | None,
    storage_options: dict[str, Any] | None,
) -> tuple[str | list[str], str, str | None, str | None]:
    """(source, destination, manifest URL, lease scope) of a run: the whole dataset, one
    partition's file, or one shard's files (read from the plan's shard file)."""
    if partition_key is None:
        src = props.source if isinstance(props.source, str) else list(props.source)
        return src, props.destination, None, None
    if shard_of_key(partition_key) is not None:
        src = props.source if isinstance(props.source, str) else list(props.source)
        shard = read_partition_shard(context, src, props.destination, partition_key, storage_options)
        return shard.sources, shard.destination, shard.manifest, shard.lease_scope
    assert isinstance(props.source, str)
    parent = str(PurePosixPath(safe_name(partition_key)).parent)
    dest = props.destination if parent in ("", ".") else join(props.destination, parent)
    return (
        join(props.source, partition_key),
        dest,
        props.partition_manifest_url(partition_key),
        f"partition:{partition_key}",
    )


def _attempt(context: dg.AssetExecutionContext) -> str:
    """Which attempt of the step this is (a retry is another attempt: never the same lease owner)."""
    try:
        return f"retry{context.retry_number}"
    except Exception:  # a context without one (a direct invocation)
        return "retry0"


def _manifest_states(url: str, storage_options: dict[str, Any] | None) -> dict[str, tuple[str, str | None]]:
    """Each input's (state, job id) before a run, to tell what the run itself processed."""
    try:
        manifest = Manifest(url, storage_options).load()
    except (VanceError, OSError, ValueError):
        return {}
    return {i.source: (i.state.value, i.job_id) for i in manifest.items.values()}


class ProgressLog:
    """Progress to ``context.log``, throttled for big batches: a line each time another tenth of
    the items has finished, or after ``every_s`` seconds with progress, and the last item's.
    1000 items make about ten lines; the summary after the batch is logged apart."""

    def __init__(self, context: dg.AssetExecutionContext, every_s: float = 30.0) -> None:
        self.context, self.every_s = context, every_s
        self.last_at = time.monotonic()
        self.logged = -1  # the finished count of the last line
        self._lock = threading.Lock()

    def __call__(self, p: Progress) -> None:
        with self._lock:
            finished = p.done + p.failed + p.skipped
            if finished == self.logged or p.total <= 0:
                return
            step = max(1, -(-p.total // 10))
            now = time.monotonic()
            crossed = finished // step > max(self.logged, 0) // step
            if finished == p.total or crossed or now - self.last_at >= self.every_s:
                self.last_at, self.logged = now, finished
                self.context.log.info(
                    f"VanceAI: {finished}/{p.total} finished ({p.done} done, {p.failed} failed, "
                    f"{p.skipped} skipped), {p.credits_spent:g} credits spent in this run"
                )


def vance_failure(exc: VanceError) -> dg.Failure:
    """A Dagster failure from a core error; retrying helps only for what may pass next time."""
    return dg.Failure(
        description=f"VanceAI: {type(exc).__name__}: {strip_query(redact(str(exc)))}",
        allow_retries=not isinstance(exc, PERMANENT_ERRORS),
    )


def _tool_call(resource: Account, props: VanceDatasetProps) -> ToolCall:
    return resolve(
        props.tool,
        dict(props.config or {}),
        api=resource.api_name,  # type: ignore[arg-type]
        output_format=props.output_format,
        jconfig=dict(props.jconfig) if isinstance(props.jconfig, Mapping) else props.jconfig,
    )


def materialize(
    context: dg.AssetExecutionContext,
    run_config: VanceRunConfig,
    resource: Account,
    props: VanceDatasetProps,
    key: dg.AssetKey,
    *,
    credentials: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    on_failure, preview_rows = props.on_failure, props.preview_rows
    partition_key = context.partition_key if props.partitioned else None
    so = props.storage_options_with(credentials)
    try:
        call = _tool_call(resource, props)
        source, destination, manifest_url, lease_scope = _target(context, props, partition_key, so)
    except VanceError as exc:
        raise vance_failure(exc) from None
    if key not in context.selected_asset_keys:  # only the checks were selected: read, never pay
        yield from _checks_only(context, props, key, call, source, destination, manifest_url, so)
        return

    budget = run_config.credit_budget if run_config.credit_budget is not None else props.credit_budget
    spec = BatchSpec(
        source=source,
        destination=destination,
        tool=props.tool,
        config=dict(props.config) if props.config else None,
        jconfig=dict(props.jconfig) if isinstance(props.jconfig, Mapping) else props.jconfig,
        output_format=props.output_format,
        max_concurrency=props.max_concurrency,
        credit_budget=budget,
        account_budget=props.account_budget,
        poll_interval=props.poll_interval,
        on_failure=on_failure,
        on_insufficient_credits=props.on_insufficient_credits,
        force=run_config.force,
        timeout=props.timeout,
        storage_options=so,
        # A lease per attempt of this run; a partition's inputs are its own, so it has its own lease
        # (partitions of one destination run side by side).
        owner=new_owner(
            "dagster", context.run_id, key.to_user_string(), partition_key or "", _attempt(context)
        ),
        lease_scope=lease_scope,
        # A shard may be empty (a hash shard that drew no file).
        allow_empty=props.allow_empty or shard_of_key(partition_key or "") is not None,
    )
    where = f" (partition {partition_key})" if partition_key else ""
    shown = (
        f"{len(source)} file(s) of the shard"
        if lease_scope and lease_scope.startswith("shard:")
        else str(source)
    )
    context.log.info(
        f"VanceAI: {props.tool} on the {resource.api_name} API{where}: "
        f"{strip_query(shown)} -> {strip_query(destination)}"
    )
    progress = ProgressLog(context)
    before = _manifest_states(manifest_url or Manifest.for_destination(destination).url, so)
    try:
        result = resource.run_batch(spec, progress, manifest_url=manifest_url)
    except VanceError as exc:
        raise vance_failure(exc) from None
    processed = sum(1 for i in result.items if before.get(i.source) != (i.state, i.job_id))
    remaining: float | None
    try:
        remaining = resource.balance().available
    except VanceError:
        remaining = None
    reports = verify_outputs(result.items, call, so)
    previews = props.preview and resource.previews
    metadata = _metadata(
        result,
        reports,
        props,
        resource.api_name,
        destination,
        remaining,
        processed,
        partition_key,
        preview_rows,
        previews=previews,
        storage_options=so,
    )
    if previews and processed:
        metadata.update(_contact_sheet(context, result, destination, so))
    context.log.info(
        f"VanceAI: {result.done} done, {result.failed} failed, {result.skipped} skipped; "
        f"{result.credits_spent:g} credits in {result.elapsed:.1f} s"
        + (f"; stopped: {result.stopped}" if result.stopped else "")
    )
    if result.failed and on_failure != "continue":
        first = next(i for i in result.items if i.state == ItemState.FAILED)
        raise dg.Failure(
            description=strip_query(
                redact(
                    f"VanceAI: {result.failed} of {len(result.items)} item(s) failed; first: "
                    f"{first.source}: {first.error}. Re-execute to retry only those "
                    f"(done items are kept and never paid again)."
                )
            ),
            metadata=metadata,
        )
    yield dg.MaterializeResult(asset_key=key, metadata=metadata)
    yield from _check_results(context, key, result.items, reports, result.credits_spent, budget)


def _check_results(
    context: dg.AssetExecutionContext,
    key: dg.AssetKey,
    items: Sequence[Any],
    reports: Sequence[Any],
    spent: float | None,
    budget: float | None,
) -> Iterator[dg.AssetCheckResult]:
    selected = {c.name for c in context.selected_asset_check_keys if c.asset_key == key}
    if CHECK_OUTPUTS in selected:
        yield outputs_check(key, reports)
    if CHECK_ACCOUNTED in selected:
        yield accounted_check(key, items)
    if CHECK_BUDGET in selected and budget is not None and spent is not None:
        yield budget_check(key, spent, budget)


def _checks_only(
    context: dg.AssetExecutionContext,
    props: VanceDatasetProps,
    key: dg.AssetKey,
    call: ToolCall,
    source: str | list[str],
    destination: str,
    manifest_url: str | None,
    so: dict[str, Any] | None,
) -> Iterator[dg.AssetCheckResult]:
    url = manifest_url or Manifest.for_destination(destination).url
    items = items_from_manifests([url], so)
    known = {i.source for i in items}
    try:
        current = list_sources(source, None, so)
    except VanceError:
        current = []
    items += [ItemResult(s.url, ItemState.PENDING.value) for s in current if s.url not in known]
    reports = verify_outputs(items, call, so)
    selected = {c.name for c in context.selected_asset_check_keys if c.asset_key == key}
    if CHECK_BUDGET in selected:  # a past run's spending is not known here; report it as passed
        yield dg.AssetCheckResult(
            asset_key=key,
            check_name=CHECK_BUDGET,
            passed=True,
            metadata={"vance/note": "checked at materialization only"},
        )
    yield from _check_results(context, key, items, reports, None, None)


def _contact_sheet(
    context: dg.AssetExecutionContext,
    result: BatchResult,
    destination: str,
    storage_options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A contact sheet of the first outputs, written beside them; its location as metadata."""
    try:
        url = write_contact_sheet(pairs_of(result.items), destination, storage_options)
    except Exception as exc:  # a preview never fails the materialization
        context.log.warning(f"VanceAI: no contact sheet written ({type(exc).__name__})")
        return {}
    return {"vance/preview_image": location_metadata(url)} if url else {}


def storage_uri(destination: str) -> str:
    """The destination as a URI without credentials or query (``file://`` for local paths)."""
    if "://" not in destination:
        return "file://" + os.path.abspath(destination)
    parts = urlsplit(strip_query(destination))
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _metadata(
    result: BatchResult,
    reports: Sequence[Any],
    props: VanceDatasetProps,
    api: str,
    destination: str,
    remaining: float | None,
    processed: int,
    partition_key: str | None,
    preview_rows: int,
    *,
    previews: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    md: dict[str, Any] = {
        "vance/api": api,
        "vance/tool": props.tool,
        "vance/inputs": len(result.items),
        "vance/done": result.done,
        "vance/failed": result.failed,
        "vance/skipped": result.skipped,
        "vance/processed_this_run": processed,
        "vance/cached": sum(1 for i in result.items if i.cached),
        "vance/credits_spent": dg.MetadataValue.float(float(round(result.credits_spent, 6))),
        "vance/credits_saved": dg.MetadataValue.float(float(round(result.credits_saved, 6))),
        "vance/elapsed_s": dg.MetadataValue.float(round(result.elapsed, 3)),
        "vance/output": location_metadata(destination),
        "vance/manifest": location_metadata(result.manifest),
        # Dagster's own keys: where the asset lives, and how many items it holds.
        "dagster/uri": dg.MetadataValue.text(storage_uri(destination)),
        "dagster/row_count": dg.MetadataValue.int(result.done),
    }
    if remaining is not None:
        md["vance/credits_remaining"] = dg.MetadataValue.float(float(remaining))
    if partition_key is not None:
        md["vance/partition"] = partition_key
    if reports:
        md["vance/preview"] = dg.MetadataValue.md(
            preview_table(reports, preview_rows, thumbnails=previews, storage_options=storage_options)
        )
    if result.stopped:
        md["vance/stopped"] = strip_query(redact(result.stopped))
    problems = [i for i in result.items if i.state in (ItemState.FAILED, ItemState.SKIPPED)]
    if problems:
        rows = [
            f"| {PurePosixPath(i.source).name} | {i.state} | {(i.error or '').replace('|', '/')} |"
            for i in problems[:20]
        ]
        md["vance/failures"] = dg.MetadataValue.md(
            strip_query(redact("\n".join(["| input | state | reason |", "|---|---|---|", *rows])))
        )
    return md
