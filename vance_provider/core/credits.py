"""Credits: estimates, balance checks and the usage report as a pandas DataFrame."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .client import AsyncVanceClient
from .manifest import ItemState, Manifest
from .models import UsageRecord

if TYPE_CHECKING:  # pandas is imported when a report is made, not when the package is
    import pandas as pd

COLUMNS = {
    "timestamp": "datetime64[ns, UTC]",
    "api": "string",
    "tool": "string",
    "kind": "string",
    "credits": "float64",
    "balance": "float64",
    "source": "string",
    "job_id": "string",
}


ManifestRef = str | tuple[str, dict[str, Any] | None]


def records_from_manifests(
    urls: Iterable[ManifestRef], storage_options: dict[str, Any] | None = None
) -> list[UsageRecord]:
    """What every job of past batches cost (the Open API keeps no history).

    Each entry is a manifest URL, or a ``(url, storage_options)`` pair for manifests on
    different stores. Every paid job of an item counts, also those of inputs redone later.
    """
    records = []
    for ref in urls:
        url, options = ref if isinstance(ref, tuple) else (ref, storage_options)
        manifest = Manifest(url, options).load()
        api = manifest.meta.get("api", "open")
        for item in manifest.items.values():
            charges = item.charges or (
                [{"job_id": item.job_id, "credits": item.credits, "at": item.updated_at}]
                if item.state == ItemState.DONE and item.job_id
                else []
            )
            for c in charges:
                ts = dt.datetime.fromtimestamp(c["at"], dt.UTC).isoformat()
                records.append(
                    UsageRecord(
                        ts, item.tool, "charge", float(c["credits"]), None, item.source, c["job_id"], api
                    )
                )
    return records


def usage_frame(records: Iterable[UsageRecord]) -> pd.DataFrame:
    """A typed DataFrame: timestamp (UTC), api, tool, kind, credits, balance, source, job_id."""
    import pandas as pd

    rows = [r.__dict__ for r in records]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    # pandas 3 infers the unit (s, us, ...); pin the documented one
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="mixed").astype(COLUMNS["timestamp"])
    df = df.astype({k: v for k, v in COLUMNS.items() if k != "timestamp"})
    df = (
        df.drop_duplicates(subset=["api", "job_id"], keep="first").reset_index(drop=True)
        if df["job_id"].notna().all() and len(df)
        else df
    )
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)


async def usage_report(
    client: AsyncVanceClient,
    manifests: Iterable[ManifestRef] = (),
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The account's usage: the web API's full history, or for the Open API the charges
    this client saw plus those recorded in the given batch manifests (deduplicated by job)."""
    records = list(await client.usage())
    if client.api == "open":  # the charges seen by this client and those in the manifests, once each
        seen = {r.job_id for r in records}
        records += [r for r in records_from_manifests(manifests, storage_options) if r.job_id not in seen]
    return usage_frame(records)


def totals(df: pd.DataFrame) -> dict[str, Any]:
    """Totals per tool and per day, for metadata and summaries."""
    charged = df[df["credits"] > 0]
    per_tool = charged.groupby("tool")["credits"].sum().round(3).to_dict()
    per_day = (
        charged.groupby(charged["timestamp"].dt.strftime("%Y-%m-%d"))["credits"].sum().round(3).to_dict()
    )
    return {"total": round(float(charged["credits"].sum()), 3), "per_tool": per_tool, "per_day": per_day}


def write_report(df: pd.DataFrame, url: str, storage_options: dict[str, Any] | None = None) -> str:
    """CSV or Parquet by the URL's extension, written to any fsspec URL atomically."""
    import io

    from .storage import write_bytes_atomic

    buf = io.BytesIO()
    if url.endswith(".parquet"):
        df.to_parquet(buf, index=False)
    elif url.endswith(".csv"):
        df.to_csv(buf, index=False)
    else:
        raise ValueError(f"report URL {url!r} must end in .csv or .parquet")
    write_bytes_atomic(url, buf.getvalue(), storage_options)
    return url
