"""OpenLineage for the VanceAI operators: datasets named by the OpenLineage naming rules, one per
batch prefix (not one per file), and a ``vanceai`` run facet (tool, API, items, credits).

Used only when a task runs, and the OpenLineage client only when Airflow's OpenLineage provider
asks for a task's lineage (``vance-pipelines[openlineage]``): nothing here is imported when a DAG
file is parsed. No token, key or signed URL ever goes into a dataset name or a facet: storage
URLs are stripped of credentials and query strings.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

#: The facet's JSON Schema, published with the documentation (docs/schemas/) and shipped in the
#: package (operators/schemas/); the two files are the same.
FACET_SCHEMA = (
    "https://vance-pipelines.readthedocs.io/en/latest/schemas/vanceai-run-facet.json#/$defs/VanceAIRunFacet"
)
GLOB_CHARS = "*?["
MEDIA_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".mp4", ".mov", ".m4v", ".webm", ".avi", ".mkv")


def dataset_name(url: str) -> tuple[str, str]:
    """(namespace, name) of a storage location by the OpenLineage naming rules.

    ``s3://bucket/key`` -> (``s3://bucket``, ``key``); ``gs://`` likewise; ``abfss://container@account
    .dfs.core.windows.net/path`` -> (``abfss://container@account.dfs.core.windows.net``, ``path``);
    ``hdfs://host:port/path`` -> (``hdfs://host:port``, ``/path``); a local path or ``file://`` ->
    (``file``, ``/absolute/path``). Credentials and query strings are dropped.
    """
    if "://" not in url:
        return "file", os.path.abspath(url)
    parts = urlsplit(url)
    scheme = {"s3a": "s3", "s3n": "s3", "gcs": "gs"}.get(parts.scheme, parts.scheme)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username and scheme in ("abfs", "abfss", "wasb", "wasbs"):
        host = f"{parts.username}@{host}"  # the container, not a credential
    path = parts.path
    if scheme == "file":
        return "file", path or "/"
    if scheme in ("s3", "gs", "abfs", "abfss", "wasb", "wasbs", "az", "adl"):
        return f"{scheme}://{host}", path.lstrip("/") or "/"
    return f"{scheme}://{host}" if host else scheme, path or "/"


def batch_prefix(url: str) -> str:
    """The prefix a batch input stands for: a glob's folder, a file's folder, or the prefix itself."""
    cut = min((url.index(c) for c in GLOB_CHARS if c in url), default=None)
    if cut is not None:
        return url[: url.rfind("/", 0, cut) + 1] or url[:cut]
    if url.lower().endswith(MEDIA_SUFFIXES):
        head = posixpath.dirname(url.rstrip("/"))
        return head + "/" if head else url
    return url


def prefixes(source: Any) -> list[str]:
    """The distinct prefixes of a batch source (a prefix, a glob, a file or a list of any)."""
    if isinstance(source, str):
        source = [source]
    return list(dict.fromkeys(batch_prefix(str(s)) for s in source or [] if s))


def _dataset(url: str) -> Any:
    from openlineage.client.event_v2 import Dataset

    namespace, name = dataset_name(url)
    return Dataset(namespace=namespace, name=name.rstrip("/") or "/")


def run_facet(**fields: Any) -> Any:
    """The ``vanceai`` run facet: tool, API, items done/failed/skipped/total and credits spent."""
    import attr
    from openlineage.client.generated.base import RunFacet

    @attr.define
    class VanceAIRunFacet(RunFacet):
        tool: str = attr.field(default="")
        api: str = attr.field(default="")
        total: int = attr.field(default=0)
        done: int = attr.field(default=0)
        failed: int = attr.field(default=0)
        skipped: int = attr.field(default=0)
        credits_spent: float = attr.field(default=0.0)

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA

    return VanceAIRunFacet(**fields)


def operator_lineage(inputs: list[str], outputs: list[str], facet: dict[str, Any] | None) -> Any:
    """An ``OperatorLineage`` for the OpenLineage provider (None when it is not installed)."""
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
    except ImportError:
        return None
    return OperatorLineage(
        inputs=[_dataset(u) for u in inputs],
        outputs=[_dataset(u) for u in outputs],
        run_facets={"vanceai": run_facet(**facet)} if facet else {},
    )


def hook_lineage(hook: Any, inputs: Collection[str], outputs: Collection[str]) -> None:
    """Report the inputs and outputs to Airflow's hook lineage collector (where Airflow has one)."""
    try:
        try:
            from airflow.sdk.lineage import get_hook_lineage_collector
        except ImportError:  # Airflow 3.0
            from airflow.lineage.hook import get_hook_lineage_collector  # type: ignore[no-redef]
        collector = get_hook_lineage_collector()
        for url in inputs:
            collector.add_input_asset(context=hook, uri=_asset_uri(url))
        for url in outputs:
            collector.add_output_asset(context=hook, uri=_asset_uri(url))
    except Exception:  # lineage must never fail a task
        return


def _asset_uri(url: str) -> str:
    namespace, name = dataset_name(url)
    if namespace == "file":
        return "file://" + name
    return namespace.rstrip("/") + "/" + name.lstrip("/")
