"""Asset factories: an enhanced dataset, and the account's credit usage.

An enhanced dataset is a folder (or bucket prefix) of images or videos run through one VanceAI
tool into another folder. The core batch engine does the work and keeps a manifest beside the
outputs, so a re-materialization processes only new or changed inputs and never pays twice,
and a failed run, re-executed, resumes where it stopped::

    import dagster as dg
    from dagster_vance import (VanceAIResource, build_credit_usage_asset, build_credit_usage_schedule,
                               build_enhanced_dataset_asset)

    photos = build_enhanced_dataset_asset("photos_x4", source="s3://in/photos/", destination="s3://out/x4/",
                                          tool="upscale", config={"scale": 4}, credit_budget=500)
    usage = build_credit_usage_asset(datasets=[photos])
    defs = dg.Definitions(
        assets=[photos, usage],
        schedules=[build_credit_usage_schedule(usage)],
        resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"))},
    )

Every dataset asset runs in the Dagster concurrency pool ``vanceai`` (``pool=``), which bounds
how many of them talk to the account at once across runs. Set its limit with
``dagster instance concurrency set vanceai 2``, or for unconfigured pools in ``dagster.yaml``::

    concurrency:
      pools:
        default_limit: 2
"""

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from pathlib import PurePosixPath
from typing import Any, Literal, NotRequired, Required, TypedDict, Unpack

import dagster as dg
import pandas as pd
from pydantic import Field

from vance_provider.core import BatchResult, BatchSpec, Progress, ToolCall, resolve, totals
from vance_provider.core.credits import ManifestRef, summary_markdown, usage_summary
from vance_provider.core.errors import PERMANENT_ERRORS, VanceError
from vance_provider.core.lease import new_owner
from vance_provider.core.manifest import ItemState, Manifest
from vance_provider.core.models import API_NAMES
from vance_provider.core.secrets import redact
from vance_provider.core.storage import join, list_sources, safe_name

from .checks import (
    accounted_check,
    budget_check,
    items_from_manifests,
    outputs_check,
    preview_table,
    verify_outputs,
)
from .resources import VanceAIResource, storage_options_of
from .translator import (
    CHECK_ACCOUNTED,
    CHECK_BUDGET,
    CHECK_OUTPUTS,
    PROPS_METADATA_KEY,
    VanceDatasetProps,
    VanceTranslator,
    location_metadata,
    secret_option_names,
    strip_query,
)

FailurePolicy = Literal["fail", "continue", "fail_fast"]
DEFAULT_POOL = "vanceai"


class VanceRunConfig(dg.Config):
    """Per-run options of an enhanced dataset (the launchpad shows them)."""

    force: bool = Field(default=False, description="Process every input again, even those done (pays again).")
    credit_budget: float | None = Field(
        default=None, description="This run's credit budget, instead of the asset's."
    )


def dataset_props(asset: dg.AssetsDefinition) -> VanceDatasetProps:
    """What an enhanced dataset asset was built from: read from its spec's ``vance/dataset``
    metadata (so it survives copies, ``with_attributes`` and code-location reloads)."""
    value = dataset_spec(asset).metadata[PROPS_METADATA_KEY]
    data = value.value if isinstance(value, dg.MetadataValue) else value
    return VanceDatasetProps.from_json(data)


def dataset_spec(asset: dg.AssetsDefinition) -> dg.AssetSpec:
    """The spec of the enhanced dataset in ``asset`` (also when a run selected only its checks)."""
    for spec in asset.specs:
        if PROPS_METADATA_KEY in (spec.metadata or {}):
            return spec
    raise dg.DagsterInvariantViolationError(
        f"{asset.key.to_user_string()} is not an enhanced dataset (built by vance_dataset_asset or "
        "build_enhanced_dataset_asset)"
    )


def _check_tool(tool: str, config: Mapping[str, Any] | None, jconfig: Any, output_format: str | None) -> None:
    """Fail at load time for a tool or config that no API accepts (no token is needed for this)."""
    errors = []
    for api in API_NAMES:
        try:
            resolve(tool, dict(config or {}), api=api, output_format=output_format, jconfig=jconfig)
            return
        except VanceError as exc:
            errors.append(f"{api} API: {exc}")
    raise dg.DagsterInvalidDefinitionError(
        f"VanceAI tool {tool!r} with this config is invalid: " + "; ".join(errors)
    )


class DatasetOptions(TypedDict, total=False):
    """The options of an enhanced dataset beyond its name, source, destination, tool and config:
    keyword arguments of :func:`build_enhanced_dataset_asset` and :func:`vance_dataset_asset`.
    Those not given take the defaults of :class:`VanceDatasetProps` (``pool``: ``vanceai``)."""

    output_format: str | None
    max_concurrency: int
    credit_budget: float | None
    storage_options: Mapping[str, Any] | None
    partitions: Literal["per_file"] | dg.DynamicPartitionsDefinition | None
    group_name: str | None
    pool: str | None
    translator: VanceTranslator | None
    jconfig: Mapping[str, Any] | str | None
    on_failure: FailurePolicy
    on_insufficient_credits: Literal["fail", "partial"]
    poll_interval: float
    timeout: float | None
    description: str | None
    resource_key: str
    storage_resource_key: str | None
    retry_policy: dg.RetryPolicy | None
    preview_rows: int
    preview: bool
    allow_empty: bool


class Dataset(DatasetOptions):
    """An enhanced dataset: ``source`` enhanced by ``tool`` into ``destination``, and its options
    (the keyword arguments of :func:`vance_dataset_asset`)."""

    name: Required[str]
    source: Required[str | Sequence[str]]
    destination: Required[str]
    tool: Required[str]
    config: NotRequired[Mapping[str, Any] | None]


#: The options that are part of the dataset's props (the others shape only its asset).
_PROPS_OPTIONS = frozenset(f.name for f in fields(VanceDatasetProps)) & frozenset(
    DatasetOptions.__annotations__
)


def build_enhanced_dataset_asset(
    name: str,
    source: str | Sequence[str],
    destination: str,
    tool: str,
    config: Mapping[str, Any] | None = None,
    **options: Unpack[DatasetOptions],
) -> dg.AssetsDefinition:
    """An asset whose materialization is ``source`` enhanced by a VanceAI ``tool`` into ``destination``.

    Args:
        name: the asset's name (the translator may prefix or replace the key).
        source: a folder or bucket prefix, a glob, or a list of file URLs (any fsspec URL).
        destination: a folder or bucket prefix; outputs keep the inputs' relative names, and the
            manifest ``_vance_manifest.json`` is kept beside them.
        tool: a friendly tool (``upscale``, ``denoise``, ``video_upscale``, ...) or a vendor tool or
            module; images or video follow from the tool. ``config`` is its options.
        output_format: ``jpg``, ``png`` or ``webp`` (images).
        max_concurrency: jobs in flight in one run (also bounded by the resource's).
        credit_budget: credits one run may spend; over it the run fails before paying anything
            (``on_insufficient_credits="fail"``) or stops submitting (``"partial"``).
        storage_options: fsspec options of the source and destination without secrets (an S3
            endpoint, a region); they are part of the asset's definition. Credentials are refused
            here: bind a storage resource and name it in ``storage_resource_key``.
        storage_resource_key: the key of a :class:`VanceStorageResource` (or dagster-aws's
            ``S3Resource``) that holds the store's credentials, read at run time (``dg.EnvVar``).
        partitions: ``"per_file"`` (or your own ``DynamicPartitionsDefinition``) for one partition
            per input file; pair it with :func:`dagster_vance.build_new_files_sensor`. ``source`` must
            then be a folder or prefix.
        group_name: the asset group.
        pool: the Dagster concurrency pool (default ``vanceai``; ``None`` for none). Limit it with
            ``dagster instance concurrency set vanceai 2``.
        translator: a :class:`VanceTranslator` to shape the asset spec and checks.
        on_failure: ``"fail"`` (the run fails after the batch when any item failed; re-execute to
            retry only those), ``"fail_fast"`` (stop submitting at the first failure) or
            ``"continue"`` (materialize anyway; the failures are listed in metadata and checks).
        poll_interval: seconds between status polls at first (the engine adapts it).
        resource_key: the key of the :class:`VanceAIResource`.
        retry_policy: a Dagster retry policy; a retried step resumes from the manifest.
        allow_empty: an empty source materializes an empty dataset (``False``: the run fails).
        preview: small before/after thumbnails of the first ``preview_rows`` outputs in the
            materialization's ``vance/preview``, and a contact sheet ``_vance_preview/_vance_contact_sheet.jpg`` beside
            the outputs (``vance/preview_image``). ``False`` for private data: the preview is then
            names and sizes only, and no picture is written (the resource's ``previews`` turns
            them off for every dataset).

    Returns:
        An ``AssetsDefinition`` with the checks ``outputs_valid``, ``inputs_accounted_for`` and, with
        a budget, ``credits_within_budget``. Select only the checks to re-run them from the manifest.

    Write the asset's body yourself with :func:`vance_dataset_asset` (the same arguments).
    """
    dataset = Dataset(name=name, source=source, destination=destination, tool=tool, config=config, **options)
    props, decorate = _dataset_asset(dataset)

    def _enhanced_dataset(context: dg.AssetExecutionContext, config: VanceRunConfig) -> Iterator[Any]:
        resource: VanceAIResource = getattr(context.resources, props.resource_key)
        yield from resource.materialize_dataset(context, config=config)

    return decorate(_enhanced_dataset, default_body=True)


def vance_dataset_asset(**dataset: Unpack[Dataset]) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    """Decorate your own body of an enhanced dataset asset (as ``@fivetran_assets`` does); it calls
    :meth:`VanceAIResource.materialize_dataset`. The arguments are those of
    :func:`build_enhanced_dataset_asset`; the dataset is carried in the asset spec's metadata
    (``vance/dataset``, no secret in it)::

        @vance_dataset_asset(name="photos_x2", source="s3://in/photos/", destination="s3://out/x2/",
                             tool="upscale", config={"scale": 2}, storage_resource_key="vance_storage")
        def photos_x2(context: dg.AssetExecutionContext, vanceai: VanceAIResource):
            yield from vanceai.materialize_dataset(context)

    Resources the body names as parameters are bound by Dagster as for any asset (a body that names
    none is given the resources under ``resource_key`` and ``storage_resource_key``). A body that
    names its resources names the storage resource too and passes it: ``storage=storage``.
    """
    return _dataset_asset(dataset)[1]


def _dataset_asset(options: Dataset) -> tuple[VanceDatasetProps, Callable[..., dg.AssetsDefinition]]:
    """The dataset's props (checked), and the decorator that makes its asset of a body (named
    after the body, or after the asset's key for the factory's own body)."""
    # As for any function: a misspelt or a missing argument must not pass unnoticed.
    unknown = sorted(set(options) - set(Dataset.__annotations__))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) for an enhanced dataset: {', '.join(unknown)}")
    missing = sorted(Dataset.__required_keys__ - set(options))
    if missing:
        raise TypeError(f"an enhanced dataset needs the argument(s) {', '.join(missing)}")
    name, source, tool = options["name"], options["source"], options["tool"]
    config, destination = options.get("config"), options["destination"]
    storage_options, jconfig = options.get("storage_options"), options.get("jconfig")
    given: dict[str, Any] = {k: v for k, v in options.items() if k in _PROPS_OPTIONS}
    given.update(
        name=name,
        source=source if isinstance(source, str) else tuple(source),
        destination=destination,
        tool=tool,
        config=dict(config) if config else None,
        jconfig=dict(jconfig) if isinstance(jconfig, Mapping) else jconfig,
        storage_options=dict(storage_options) if storage_options else None,
    )
    props = VanceDatasetProps(**given)
    if props.on_failure not in ("fail", "continue", "fail_fast"):
        raise dg.DagsterInvalidDefinitionError(
            f"on_failure must be fail, continue or fail_fast, got {props.on_failure!r}"
        )
    secrets = secret_option_names(storage_options)
    if secrets:  # the definitions (and the UI, and the run's snapshot) would hold them
        raise dg.DagsterInvalidDefinitionError(
            f"{name}: storage_options must not hold credentials ({', '.join(secrets)}): bind a "
            "VanceStorageResource (or dagster-aws's S3Resource) with dg.EnvVar(...) values and pass "
            "its key as storage_resource_key"
        )
    _check_tool(tool, config, jconfig, props.output_format)
    partitions = options.get("partitions")
    partitions_def: dg.DynamicPartitionsDefinition | None
    if partitions == "per_file":
        partitions_def = dg.DynamicPartitionsDefinition(name=f"{name}_files")
    elif partitions is None or isinstance(partitions, dg.DynamicPartitionsDefinition):
        partitions_def = partitions
    else:
        raise dg.DagsterInvalidDefinitionError(
            "partitions must be 'per_file', a DynamicPartitionsDefinition or None"
        )
    if partitions_def is not None and (not isinstance(source, str) or any(c in source for c in "*?[")):
        raise dg.DagsterInvalidDefinitionError(
            "per-file partitions need source to be one folder or bucket prefix"
        )
    props = replace(props, partitioned=partitions_def is not None)

    translator = options.get("translator") or VanceTranslator()
    spec = translator.get_asset_spec(props)
    spec = spec.merge_attributes(metadata={PROPS_METADATA_KEY: dg.MetadataValue.json(props.user_json())})
    if partitions_def is not None:
        spec = spec.replace_attributes(partitions_def=partitions_def)
    key = spec.key
    check_specs = list(translator.get_check_specs(props, key))
    resource_keys = {props.resource_key} | (
        {props.storage_resource_key} if props.storage_resource_key else set()
    )

    def decorate(fn: Callable[..., Any], default_body: bool = False) -> dg.AssetsDefinition:
        import inspect

        # Dagster takes resources either as the body's parameters or as required keys, never both.
        takes_resources = any(p != "config" for p in list(inspect.signature(fn).parameters)[1:])
        return dg.multi_asset(
            name=key.to_python_identifier() if default_body else fn.__name__,
            specs=[spec],
            check_specs=check_specs,
            can_subset=True,
            required_resource_keys=None if takes_resources else resource_keys,
            pool=options.get("pool", DEFAULT_POOL),
            retry_policy=options.get("retry_policy"),
            op_tags={"vanceai/tool": tool},
        )(fn)

    return props, decorate


# --- the materialization ----------------------------------------------------------------------
def _target(props: VanceDatasetProps, partition_key: str | None) -> tuple[str | list[str], str, str | None]:
    """(source, destination, manifest URL) of a run: the whole dataset, or one partition's file."""
    if partition_key is None:
        src = props.source if isinstance(props.source, str) else list(props.source)
        return src, props.destination, None
    assert isinstance(props.source, str)
    parent = str(PurePosixPath(safe_name(partition_key)).parent)
    dest = props.destination if parent in ("", ".") else join(props.destination, parent)
    return join(props.source, partition_key), dest, props.partition_manifest_url(partition_key)


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


class _ProgressLog:
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


def _failure(exc: VanceError) -> dg.Failure:
    """A Dagster failure from a core error; retrying helps only for what may pass next time."""
    return dg.Failure(
        description=f"VanceAI: {type(exc).__name__}: {strip_query(redact(str(exc)))}",
        allow_retries=not isinstance(exc, PERMANENT_ERRORS),
    )


def _tool_call(resource: VanceAIResource, props: VanceDatasetProps) -> ToolCall:
    return resolve(
        props.tool,
        dict(props.config or {}),
        api=resource.api_name,  # type: ignore[arg-type]
        output_format=props.output_format,
        jconfig=dict(props.jconfig) if isinstance(props.jconfig, Mapping) else props.jconfig,
    )


def _materialize(
    context: dg.AssetExecutionContext,
    run_config: VanceRunConfig,
    resource: VanceAIResource,
    props: VanceDatasetProps,
    key: dg.AssetKey,
    *,
    credentials: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    on_failure, preview_rows = props.on_failure, props.preview_rows
    partition_key = context.partition_key if props.partitioned else None
    source, destination, manifest_url = _target(props, partition_key)
    so = props.storage_options_with(credentials)
    try:
        call = _tool_call(resource, props)
    except VanceError as exc:
        raise _failure(exc) from None
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
        poll_interval=props.poll_interval,
        on_failure=on_failure,
        on_insufficient_credits=props.on_insufficient_credits,
        force=run_config.force,
        timeout=props.timeout,
        storage_options=so,
        allow_empty=props.allow_empty,
        # A lease per attempt of this run; a partition's inputs are its own, so it has its own lease
        # (partitions of one destination run side by side).
        owner=new_owner(
            "dagster", context.run_id, key.to_user_string(), partition_key or "", _attempt(context)
        ),
        lease_scope=f"partition:{partition_key}" if partition_key is not None else None,
    )
    where = f" (partition {partition_key})" if partition_key else ""
    context.log.info(
        f"VanceAI: {props.tool} on the {resource.api_name} API{where}: "
        f"{strip_query(str(source))} -> {strip_query(destination)}"
    )
    progress = _ProgressLog(context)
    before = _manifest_states(manifest_url or Manifest.for_destination(destination).url, so)
    try:
        result = resource.run_batch(spec, progress, manifest_url=manifest_url)
    except VanceError as exc:
        raise _failure(exc) from None
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
    from vance_provider.core.batch import ItemResult

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
    from vance_provider.core.preview import pairs_of, write_contact_sheet

    try:
        url = write_contact_sheet(pairs_of(result.items), destination, storage_options)
    except Exception as exc:  # a preview never fails the materialization
        context.log.warning(f"VanceAI: no contact sheet written ({type(exc).__name__})")
        return {}
    return {"vance/preview_image": location_metadata(url)} if url else {}


def storage_uri(destination: str) -> str:
    """The destination as a URI without credentials or query (``file://`` for local paths)."""
    import os
    from urllib.parse import urlsplit, urlunsplit

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


# --- credit usage -------------------------------------------------------------------------------
def build_credit_usage_asset(
    name: str = "vanceai_credit_usage",
    *,
    datasets: Sequence[dg.AssetsDefinition] = (),
    manifests: Sequence[ManifestRef] = (),
    group_name: str | None = "vanceai",
    resource_key: str = "vanceai",
    io_manager_key: str = "io_manager",
    description: str | None = None,
) -> dg.AssetsDefinition:
    """The account's credit usage as a typed pandas DataFrame, stored by an IO manager you choose.

    Columns: ``timestamp`` (UTC), ``api``, ``tool``, ``kind``, ``credits``, ``balance``, ``source``,
    ``job_id``. On the web API it is the service's full history; the Open API keeps none, so it is
    built from the manifests of ``datasets`` (and any extra ``manifests``). Metadata carries the
    totals per tool and per day. Swap the storage with ``io_manager_key`` (default: the
    ``io_manager`` resource, a pickling filesystem IO manager unless you bind another), and refresh
    it daily with :func:`build_credit_usage_schedule`.
    """
    props = [dataset_props(d) for d in datasets]
    deps = [k for d in datasets for k in d.keys]

    @dg.asset(
        name=name,
        group_name=group_name,
        deps=deps,
        io_manager_key=io_manager_key,
        required_resource_keys={resource_key}
        | {p.storage_resource_key for p in props if p.storage_resource_key},
        kinds={"vanceai", "pandas"},
        description=description
        or "VanceAI credit usage: one row per charge or job, totals per tool and day.",
        metadata={"dagster/column_schema": credit_report_schema()},
        check_specs=[
            dg.AssetCheckSpec(
                CHECK_USAGE_MATCHES,
                asset=name,
                description="The report's credits for the datasets' batches equal what their "
                "manifests recorded as spent (nothing lost or counted twice).",
            )
        ],
    )
    def _credit_usage(context: dg.AssetExecutionContext) -> Iterator[Any]:
        resource: VanceAIResource = getattr(context.resources, resource_key)
        refs: list[ManifestRef] = list(manifests)
        for p in props:
            try:
                credentials = (
                    storage_options_of(getattr(context.resources, p.storage_resource_key))
                    if p.storage_resource_key
                    else None
                )
                options = p.storage_options_with(credentials)
                refs += [(url, options) for url in p.existing_manifests(options)]
            except Exception as exc:  # a store we cannot list would make the report silently short
                raise dg.Failure(
                    description=f"VanceAI usage: cannot list the manifests of {p.name} under "
                    f"{strip_query(p.destination)} ({type(exc).__name__}); check its storage options "
                    f"and credentials"
                ) from None
        try:
            df = resource.usage_report(refs)
        except VanceError as exc:
            raise _failure(exc) from None
        t = totals(df)
        context.log.info(
            f"VanceAI usage: {len(df)} record(s), {t['total']:g} credits from {len(refs)} manifest(s)"
        )
        metadata: dict[str, Any] = {
            "vance/api": resource.api_name,
            "vance/credits_total": dg.MetadataValue.float(float(t["total"])),
            "vance/per_tool": _totals_table("tool", t["per_tool"]),
            "vance/per_day": _totals_table("day", t["per_day"]),
            "vance/summary": dg.MetadataValue.md(summary_markdown(usage_summary(df))),
            "vance/manifests": len(refs),
            "dagster/row_count": len(df),
            "dagster/column_schema": credit_report_schema([str(c) for c in df.columns], df),
        }
        yield dg.Output(df, metadata=metadata)
        yield _usage_check(name, df, refs)

    return _credit_usage


CHECK_USAGE_MATCHES = "matches_datasets_spend"

#: What each column of the credit report holds (``vance_provider.core.credits.COLUMNS``).
CREDIT_COLUMN_DESCRIPTIONS = {
    "timestamp": "When the charge was made (UTC; to the microsecond where the batch recorded it).",
    "api": "web (VanceAI web API v1), open (Open API v1) or visioncraft.",
    "tool": "Our name of the tool: upscale, denoise, remove_bg, ...",
    "vendor_tool": "The vendor's name of the tool: the web API module (enlarge3) or the Open API tool.",
    "kind": "download (the web API charges a result's first download), charge (the Open API charges a "
    "job that succeeded) or cached (served by the result cache, 0 credits).",
    "credits": "What the charge cost.",
    "balance": "The balance right after the charge, where the API says (web API only).",
    "source": "The input, as the batch was given it (path or URL).",
    "output": "Where its result was stored.",
    "job_id": "The vendor's job id.",
    "batch": "The batch it belongs to: the URL of its manifest.",
    "run": "The run that paid for it, where the engine recorded one.",
    "saved": "On a cached row: what the result cost when it was paid for; else 0.",
}


def _totals_table(label: str, totals_by: Mapping[Any, Any]) -> dg.MetadataValue:
    """Credits per tool or per day as a table of two columns, largest tool first or days in order."""
    items = [(str(k), float(v)) for k, v in totals_by.items()]
    items.sort(key=(lambda kv: kv[0]) if label == "day" else (lambda kv: (-kv[1], kv[0])))
    return dg.MetadataValue.table(
        records=[dg.TableRecord({label: k, "credits": v}) for k, v in items],
        schema=dg.TableSchema(columns=[dg.TableColumn(label, "string"), dg.TableColumn("credits", "float")]),
    )


def _usage_check(name: str, df: pd.DataFrame, refs: Sequence[ManifestRef]) -> dg.AssetCheckResult:
    """The report's credits for the datasets' batches against what their manifests recorded."""
    from vance_provider.core.credits import records_from_manifests

    urls = {ref[0] if isinstance(ref, tuple) else ref for ref in refs}
    recorded = sum(r.credits for r in records_from_manifests(refs)) if refs else 0.0
    reported = float(df.loc[df["batch"].isin(urls), "credits"].sum()) if len(df) else 0.0
    return dg.AssetCheckResult(
        asset_key=dg.AssetKey(name),
        check_name=CHECK_USAGE_MATCHES,
        passed=abs(reported - recorded) < 1e-6,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "vance/reported_for_datasets": dg.MetadataValue.float(round(reported, 6)),
            "vance/recorded_in_manifests": dg.MetadataValue.float(round(float(recorded), 6)),
            "vance/manifests": len(urls),
        },
    )


def credit_report_schema(
    columns: Sequence[str] | None = None, df: pd.DataFrame | None = None
) -> dg.TableSchema:
    """The credit report's columns (``vance_provider.core.credits.COLUMNS``, or ``columns`` with the
    types of ``df``) as a Dagster table schema, each with its description."""
    from vance_provider.core.credits import COLUMNS

    names = list(columns) if columns is not None else list(COLUMNS)
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                str(df[name].dtype) if df is not None and name in df else str(COLUMNS.get(name, "string")),
                description=CREDIT_COLUMN_DESCRIPTIONS.get(name),
            )
            for name in names
        ]
    )


def build_credit_usage_schedule(
    usage_asset: dg.AssetsDefinition,
    *,
    cron_schedule: str = "0 6 * * *",
    name: str | None = None,
    execution_timezone: str = "UTC",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
) -> dg.ScheduleDefinition:
    """Refresh the credit usage asset daily (06:00 UTC unless told otherwise)."""
    return dg.ScheduleDefinition(
        name=name or f"{usage_asset.key.to_python_identifier()}_daily",
        cron_schedule=cron_schedule,
        target=usage_asset,
        execution_timezone=execution_timezone,
        default_status=default_status,
        description="Refresh the VanceAI credit usage report.",
    )
