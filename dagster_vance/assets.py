"""An enhanced dataset as an asset: the factory and the decorator (the materialization itself is
in :mod:`dagster_vance.materialize`, the credit usage asset in :mod:`dagster_vance.credit_usage`).

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

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal, NotRequired, Required, TypedDict, Unpack

import dagster as dg

from vance_provider.core import resolve
from vance_provider.core.api.errors import VanceError
from vance_provider.core.api.models import API_NAMES

from .materialize import VanceRunConfig
from .options import DEFAULT_POOL, FAILURE_POLICIES, FailurePolicy, option_names, options_doc
from .resources import VanceAIResource
from .shards import is_shard_partitions
from .translator import PROPS_METADATA_KEY, VanceDatasetProps, VanceTranslator, secret_option_names


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


class DatasetKwargs(TypedDict, total=False):
    """The keyword arguments of :func:`build_enhanced_dataset_asset` and :func:`vance_dataset_asset`
    beyond the dataset itself, for type checkers: the fields of :class:`~dagster_vance.options.DatasetOptions` and
    :data:`~dagster_vance.options.ASSET_ONLY_OPTIONS`."""

    output_format: str | None
    jconfig: Mapping[str, Any] | str | None
    max_concurrency: int
    credit_budget: float | None
    account_budget: str | None
    group_name: str | None
    description: str | None
    storage_options: Mapping[str, Any] | None
    resource_key: str
    storage_resource_key: str | None
    on_failure: FailurePolicy
    on_insufficient_credits: Literal["fail", "partial"]
    poll_interval: float
    timeout: float | None
    preview_rows: int
    allow_empty: bool
    preview: bool
    partitions: Literal["per_file"] | dg.DynamicPartitionsDefinition | dg.StaticPartitionsDefinition | None
    pool: str | None
    translator: VanceTranslator | None
    retry_policy: dg.RetryPolicy | None


class Dataset(DatasetKwargs):
    """An enhanced dataset: ``source`` enhanced by ``tool`` into ``destination``, and its options
    (the keyword arguments of :func:`vance_dataset_asset`)."""

    name: Required[str]
    source: Required[str | Sequence[str]]
    destination: Required[str]
    tool: Required[str]
    config: NotRequired[Mapping[str, Any] | None]


#: The options carried in the dataset's props (the others shape only its asset).
_PROPS_OPTIONS = frozenset(option_names())


def build_enhanced_dataset_asset(
    name: str,
    source: str | Sequence[str],
    destination: str,
    tool: str,
    config: Mapping[str, Any] | None = None,
    **options: Unpack[DatasetKwargs],
) -> dg.AssetsDefinition:
    """An asset whose materialization is ``source`` enhanced by a VanceAI ``tool`` into ``destination``.

    Args:
        name: the asset's name (the translator may prefix or replace the key).
        source: a folder or bucket prefix, a glob, or a list of file URLs (any fsspec URL).
        destination: a folder or bucket prefix; outputs keep the inputs' relative names, and the
            manifest ``_vance_manifest.json`` is kept beside them.
        tool: a friendly tool (``upscale``, ``denoise``, ``video_upscale``, ...) or a vendor tool or
            module; images or video follow from the tool. ``config`` is its options.
        partitions: ``"per_file"`` (or your own ``DynamicPartitionsDefinition``) for one partition
            per input file; pair it with :func:`dagster_vance.build_new_files_sensor`. ``source`` must
            then be a folder or prefix. Or ``shard_partitions(8)`` (:mod:`dagster_vance.shards`): one
            partition per shard of one listing of a flat source, each its own manifest and lease.
        pool: the Dagster concurrency pool (default ``vanceai``; ``None`` for none). Limit it with
            ``dagster instance concurrency set vanceai 2``.
        translator: a :class:`VanceTranslator` to shape the asset spec and checks.
        retry_policy: a Dagster retry policy; a retried step resumes from the manifest.

    The other keyword arguments are the dataset's options
    (:class:`~dagster_vance.options.DatasetOptions`), listed at the end.

    Returns:
        An ``AssetsDefinition`` with the checks ``outputs_valid``, ``inputs_accounted_for`` and, with
        a budget, ``credits_within_budget``. Select only the checks to re-run them from the manifest.

    Write the asset's body yourself with :func:`vance_dataset_asset` (the same arguments).

    Options:
    """
    dataset = Dataset(name=name, source=source, destination=destination, tool=tool, config=config, **options)
    props, decorate = _dataset_asset(dataset)

    def _enhanced_dataset(context: dg.AssetExecutionContext, config: VanceRunConfig) -> Iterator[Any]:
        resource: VanceAIResource = getattr(context.resources, props.resource_key)
        yield from resource.materialize_dataset(context, config=config)

    return decorate(_enhanced_dataset, default_body=True)


build_enhanced_dataset_asset.__doc__ = (build_enhanced_dataset_asset.__doc__ or "") + options_doc() + "\n"


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
    if props.on_failure not in FAILURE_POLICIES:
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
    partitions_def: dg.DynamicPartitionsDefinition | dg.StaticPartitionsDefinition | None
    sharded = is_shard_partitions(partitions)
    if partitions == "per_file":
        partitions_def = dg.DynamicPartitionsDefinition(name=f"{name}_files")
    elif partitions is None or isinstance(partitions, dg.DynamicPartitionsDefinition) or sharded:
        partitions_def = partitions  # type: ignore[assignment]
    else:
        raise dg.DagsterInvalidDefinitionError(
            "partitions must be 'per_file', a DynamicPartitionsDefinition, shard_partitions(n) or None"
        )
    if (
        partitions_def is not None
        and not sharded
        and (not isinstance(source, str) or any(c in source for c in "*?["))
    ):
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
