"""A sensor that turns new (and changed) files under a dataset's source into partitions and runs.

    photos = build_enhanced_dataset_asset("photos", source="s3://in/photos/", destination="s3://out/photos/",
                                          tool="upscale", partitions="per_file")
    defs = dg.Definitions(assets=[photos], sensors=[build_new_files_sensor(photos)], resources={...})

Each tick lists the source prefix (nothing is uploaded or paid), adds a dynamic partition per new
file and requests one run per new file. A file whose content changed (new ETag, or size and
mtime) gets a new run of its existing partition. The cursor keeps a short fingerprint per file.
"""

import hashlib
import json
from typing import Any

import dagster as dg
from fsspec.core import url_to_fs

from vance_provider.core.state.storage import list_sources

from .resources import storage_options_of
from .translator import dataset_props

INVALID_KEY_PARTS = ("...", "\a", "\b", "\f", "\n", "\r", "\t", "\v", "\0")


def _short(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:12]


def build_new_files_sensor(
    dataset: dg.AssetsDefinition,
    *,
    name: str | None = None,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    max_runs_per_tick: int = 500,
    run_changed_files: bool = True,
) -> dg.SensorDefinition:
    """A sensor for a dataset built with ``partitions="per_file"``.

    Args:
        dataset: the asset returned by :func:`build_enhanced_dataset_asset`.
        minimum_interval_seconds: how often the source is listed.
        max_runs_per_tick: new files beyond this wait for the next tick (their partitions are added
            only when their run is requested, so nothing is lost).
        run_changed_files: also run a file's partition again when its content changed.
    """
    props = dataset_props(dataset)
    partitions_def = dataset.partitions_def
    if not props.partitioned or not isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        raise dg.DagsterInvalidDefinitionError(
            f"{dataset.key.to_user_string()} is not partitioned per file; build it with partitions='per_file'"
        )
    assert partitions_def.name is not None
    partitions_name: str = partitions_def.name
    key = dataset.key
    source = props.source
    assert isinstance(source, str)

    @dg.sensor(
        name=name or f"{key.to_python_identifier()}_new_files",
        required_resource_keys={props.storage_resource_key} if props.storage_resource_key else None,
        asset_selection=[key],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Adds a partition of {key.to_user_string()} for each new file under {source} and runs it.",
    )
    def _new_files(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        credentials = (
            storage_options_of(getattr(context.resources, props.storage_resource_key))
            if props.storage_resource_key
            else None
        )
        options: dict[str, Any] = props.storage_options_with(credentials) or {}
        fs, _ = url_to_fs(source, **options)
        fs.invalidate_cache()  # object-store listings are cached per process
        files = list_sources(source, None, options)
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        existing = set(context.instance.get_dynamic_partitions(partitions_name))
        new_keys: list[str] = []
        runs: list[dg.RunRequest] = []
        for f in files:
            pk = f.relative
            if any(bad in pk for bad in INVALID_KEY_PARTS):
                context.log.warning(f"skipping {f.url}: its name cannot be a partition key")
                continue
            short = _short(f.fingerprint)
            if pk not in existing:
                if len(runs) >= max_runs_per_tick:
                    continue
                new_keys.append(pk)
            elif not run_changed_files or seen.get(pk) in (None, short):
                seen[pk] = short  # known file, unchanged (or first seen by this cursor)
                continue
            elif len(runs) >= max_runs_per_tick:
                continue
            seen[pk] = short
            runs.append(
                dg.RunRequest(
                    run_key=f"{pk}@{short}",
                    partition_key=pk,
                    asset_selection=[key],
                    tags={"vanceai/file": pk},
                )
            )
        if new_keys:
            context.log.info(f"{len(new_keys)} new file(s) under {source}")
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=[partitions_def.build_add_request(new_keys)] if new_keys else [],
            cursor=json.dumps(seen, sort_keys=True),
        )

    return _new_files
