"""The account's credit usage as an asset (a pandas DataFrame), and a schedule that refreshes it::

    usage = build_credit_usage_asset(datasets=[photos])
    defs = dg.Definitions(
        assets=[photos, usage],
        schedules=[build_credit_usage_schedule(usage)],
        resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"))},
    )

Asset bodies here are read by Dagster at definition time: no ``from __future__ import annotations``.
"""

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dagster as dg
import pandas as pd

from vance_provider.core import totals
from vance_provider.core.api.errors import VanceError
from vance_provider.core.reports.credits import (
    COLUMNS,
    ManifestRef,
    records_from_manifests,
    summary_markdown,
    usage_summary,
)

from .materialize import vance_failure
from .resources import VanceAIResource, storage_options_of
from .translator import dataset_props, strip_query


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
            raise vance_failure(exc) from None
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

#: What each column of the credit report holds (``vance_provider.core.reports.credits.COLUMNS``).
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
    """The credit report's columns (``vance_provider.core.reports.credits.COLUMNS``, or ``columns`` with the
    types of ``df``) as a Dagster table schema, each with its description."""
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
