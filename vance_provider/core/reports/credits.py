"""Credits: the usage report (one row per charge) and its summary, as pandas DataFrames.

The report has the same columns for every API (see ``COLUMNS`` and ``docs/credits.md``):

- **web API v1** keeps the account's history (``points/record``): what each download cost and
  the balance after it, to the second, named by the vendor's module and a server-side file
  name. Joined with the batch manifests, each charge gets its input, output, job id, batch and
  our tool name, and a time to the microsecond (from when the engine stored the result).
- **Open API v1** keeps no history: the charges come from the batch manifests (and from the
  finished jobs the client saw). It reports no balance per charge.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from ..api.models import ApiName, Capabilities, UsageRecord, credits_text
from ..state.manifest import ItemState, Manifest
from ..state.storage import write_bytes_atomic
from ..tools import OWN_TOOLS, VENDOR_NAMES
from ..vendors.capabilities import capabilities_of

if TYPE_CHECKING:
    # pandas is imported when a report is made, not when the package is
    import pandas as pd


class UsageClient(Protocol):
    """What a usage report needs of a client (:class:`~vance_provider.core.client.AsyncVanceClient`)."""

    @property
    def api(self) -> ApiName: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def usage(self) -> list[UsageRecord]: ...


log = logging.getLogger("vance_provider.credits")

COLUMNS = {
    "timestamp": "datetime64[ns, UTC]",
    "api": "string",
    "tool": "string",
    "vendor_tool": "string",
    "kind": "string",
    "credits": "float64",
    "balance": "float64",
    "source": "string",
    "output": "string",
    "job_id": "string",
    "batch": "string",
    "run": "string",
    "saved": "float64",
}
SUMMARY_COLUMNS = {
    "api": "string",
    "tool": "string",
    "batches": "int64",
    "items": "int64",
    "charges": "int64",
    "credits": "float64",
    "saved": "float64",
}
ALL = "all"  # the api / tool of the summary's subtotal and total rows

# Matching the web API's history (to the second, on the service's clock) with the manifests' charges
# (recorded by the engine after the download that was charged): how far apart the two may be.
CLOCK_SKEW = 5.0  # seconds the service's clock may run ahead of ours
MAX_STORE_DELAY = 3600.0  # seconds between the charged download and the stored result
MAX_CANDIDATES = 500  # history records looked at per charge (nearest first)

#: A batch manifest: its URL, or ``(url, storage_options)`` for manifests on different stores.
ManifestRef = str | tuple[str, Mapping[str, Any] | None]

_OURS = {
    api: {vendor: ours for ours, vendor in names.items() if vendor} for api, names in VENDOR_NAMES.items()
}


def our_tool(name: str, api: str) -> str:
    """Our name for a tool the vendor names (``enlarge3`` -> ``upscale``); unknown names are kept."""
    return _OURS.get(api, {}).get(name, name)


def vendor_tool(name: str, api: str) -> str | None:
    """The vendor's name of one of our tools (``upscale`` -> ``enlarge3`` on the web API)."""
    names = VENDOR_NAMES.get(api, {})
    if name in names:
        return names[name]
    own = OWN_TOOLS.get(api)
    if own is not None:
        return name if name in own else None
    return name or None


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def _epoch(timestamp: str | None) -> float | None:
    """Seconds since the epoch of an ISO timestamp (naive ones are UTC); None if unreadable."""
    if not timestamp:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


def records_from_manifests(
    urls: Iterable[ManifestRef], storage_options: dict[str, Any] | None = None
) -> list[UsageRecord]:
    """Every charge recorded in batch manifests, with its input, output, job id and batch.

    Each entry is a manifest URL, or a ``(url, storage_options)`` pair for manifests on
    different stores. Every paid job of an item counts, also those of inputs redone later.
    """
    records = []
    for ref in urls:
        if isinstance(ref, tuple):
            url, given = ref
            options = dict(given) if given else None
        else:
            url, options = ref, storage_options
        stored_meta, rows = Manifest(url, options).rows()  # plain rows: no items to build
        meta = {**stored_meta, **(stored_meta.get("identity") or {})}  # older manifests: no identity
        api: ApiName = meta.get("api") or "open"
        charged_on_download = capabilities_of(api).charges_on_download
        for row in rows:
            charges = row.get("charges") or (
                [
                    {
                        "job_id": row.get("job_id"),
                        "credits": row.get("credits", 0.0),
                        "at": row.get("updated_at"),
                    }
                ]
                if row.get("state") == ItemState.DONE and row.get("job_id")
                else []
            )
            tool = row.get("tool") or str(meta.get("tool") or "")
            item = SimpleNamespace(source=row.get("source"), output=row.get("output"))
            if row.get("cached") and row.get("state") == ItemState.DONE:  # served by the cache: no charge
                records.append(
                    UsageRecord(
                        timestamp=_iso(float(row.get("updated_at") or 0.0)),
                        tool=our_tool(tool, api),
                        kind="cached",
                        credits=0.0,
                        balance=None,
                        source=item.source,
                        job_id=None,
                        api=api,
                        vendor_tool=vendor_tool(tool, api),
                        output=item.output,
                        batch=url,
                        saved=float(row.get("saved") or 0.0),
                    )
                )
            for c in charges:
                at = c.get("charged_at") or c["at"]
                records.append(
                    UsageRecord(
                        timestamp=_iso(float(at)),
                        tool=our_tool(tool, api),
                        kind="download" if charged_on_download else "charge",
                        credits=float(c["credits"]),
                        balance=None,
                        source=item.source,
                        job_id=c.get("job_id"),
                        api=api,
                        vendor_tool=vendor_tool(tool, api),
                        output=item.output,
                        batch=url,
                        run=c.get("run"),
                    )
                )
    return records


def join_web_history(history: list[UsageRecord], recorded: Iterable[UsageRecord]) -> list[UsageRecord]:
    """The web API's charges, oldest first, each completed from the manifest charge it matches.

    ``history`` is the service's ``points/record`` (newest first, as it gives them); its ``job``
    records of 0 credits are not charges and are left out. A charge matches the recorded one of
    the same module and credits stored soonest after it, preferring the one whose input's file
    name the service's record names. A matched charge takes the recorded input, output, job id,
    batch and our tool name, and a time to the microsecond; it keeps the service's balance and
    order (its times are made to follow that order: a charge happened no later than the next).
    Recorded charges the history lacks (another account's) are left out.

    The service writes its times without a zone. They are read as UTC, unless the charges that
    name their input show that the service's clock runs a whole number of quarter hours off
    (a local time zone): then its times are corrected by that much.
    """
    charges = [h for h in history if h.credits]
    times = [_epoch(h.timestamp) for h in charges]
    known = [t for t in times if t is not None]
    if not (known and known[0] < known[-1]):  # newest first (as documented): make it oldest first
        charges.reverse()
        times.reverse()
    recorded = list(recorded)
    offset = _zone_offset(charges, times, recorded)
    if offset:
        times = [None if t is None else t + offset for t in times]
        charges = [
            h if t is None else dataclasses.replace(h, timestamp=_iso(t))
            for h, t in zip(charges, times, strict=True)
        ]
    # per amount of credits, the history's charges in time order (their positions in ``charges``)
    by_credits: dict[float, list[tuple[float, int]]] = {}
    for i, t in enumerate(times):
        if t is not None:
            by_credits.setdefault(round(charges[i].credits, 6), []).append((t, i))
    for group in by_credits.values():
        group.sort()
    taken: dict[int, tuple[float, UsageRecord]] = {}
    pending = sorted(
        ((at, r) for r in recorded if (at := _epoch(r.timestamp)) is not None), key=lambda p: p[0]
    )
    unmatched = 0
    for at, rec in pending:
        group = by_credits.get(round(rec.credits, 6), [])
        name = PurePosixPath(rec.source or "").name
        best: tuple[int, float, int] | None = None
        pos = bisect.bisect_right(group, (at + CLOCK_SKEW, len(charges)))
        for t, i in reversed(group[max(0, pos - MAX_CANDIDATES) : pos]):
            if at - t > MAX_STORE_DELAY:
                break
            h = charges[i]
            if i in taken or (rec.vendor_tool and h.tool and h.tool != rec.vendor_tool):
                continue
            score = (0 if name and name in (h.source or "") else 1, abs(at - t), i)
            if best is None or score < best:
                best = score
            if score[0] == 0:
                break  # the nearest that names the input
        if best is None:
            unmatched += 1
        else:
            taken[best[2]] = (at, rec)
    if unmatched:
        log.warning("%d web charge(s) of the manifests are not in the account's history", unmatched)
    rows: list[UsageRecord] = []
    stamps: list[float | None] = []
    for i, h in enumerate(charges):
        if i in taken:
            at, rec = taken[i]
            rows.append(
                dataclasses.replace(
                    rec, kind=h.kind, balance=h.balance, vendor_tool=h.tool or rec.vendor_tool
                )
            )
            stamps.append(at)
        else:
            rows.append(dataclasses.replace(h, tool=our_tool(h.tool, h.api), vendor_tool=h.tool, source=None))
            stamps.append(times[i])
    later: float | None = None
    for k in range(len(rows) - 1, -1, -1):  # each charge no later than the next one
        t = stamps[k]
        if t is None:
            continue
        if later is not None and t > later:
            t = later
        if k in taken or t != times[k]:
            rows[k] = dataclasses.replace(rows[k], timestamp=_iso(t))
        later = t
    return rows


def _zone_offset(charges: list[UsageRecord], times: list[float | None], recorded: list[UsageRecord]) -> float:
    """Seconds to add to the service's times: the median gap between the charges that name an
    input and the recorded charges of that input, rounded to quarter hours (0 if none, or if the
    gap is not close to a whole number of quarter hours)."""
    by_name: dict[str, list[float]] = {}
    for r in recorded[-50:]:  # a sample is enough: the offset is one for the whole history
        at = _epoch(r.timestamp)
        if r.source and at is not None:
            by_name.setdefault(PurePosixPath(r.source).name, []).append(at)
    gaps: list[float] = []
    for h, t in list(zip(charges, times, strict=True))[-2000:]:
        if t is None or not h.source:
            continue
        for name, ats in by_name.items():
            if name in h.source:
                gaps.append(min(ats, key=lambda at: abs(at - t)) - t)
                break
        if len(gaps) >= 200:
            break
    if not gaps:
        return 0.0
    gaps.sort()
    median = gaps[len(gaps) // 2]
    quarters = round(median / 900.0) * 900.0
    return quarters if abs(median - quarters) <= 120.0 else 0.0


def usage_frame(records: Iterable[UsageRecord]) -> pd.DataFrame:
    """A typed DataFrame of ``COLUMNS``, one row per record (once per job), in time order."""
    import pandas as pd

    rows = [dict(vars(r)) for r in records]  # flat records: no need for asdict's deep copy
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    # pandas 3 infers the unit (s, us, ...); pin the documented one
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601").astype(COLUMNS["timestamp"])
    df = df.astype({k: v for k, v in COLUMNS.items() if k != "timestamp"})
    if len(df):
        dup = df["job_id"].notna() & df.duplicated(subset=["api", "job_id"], keep="first")
        df = df[~dup]
    return df.sort_values("timestamp", kind="stable").reset_index(drop=True)


async def usage_report(
    client: UsageClient,
    manifests: Iterable[ManifestRef] = (),
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The account's charges, one row each, in time order (see the module's docstring).

    Web API: the service's full history, completed from the charges recorded in ``manifests``.
    Open API: the charges recorded in ``manifests`` and those this client saw. Charges recorded
    in manifests of another API than the client's are included as recorded.
    """
    everything = records_from_manifests(manifests, storage_options)
    cached = [r for r in everything if r.kind == "cached"]  # no charge: the service knows nothing of them
    recorded = [r for r in everything if r.kind != "cached"]
    own = list(await client.usage())
    if client.capabilities.has_usage_history:  # the service's history, completed from the manifests
        rows = join_web_history(own, [r for r in recorded if r.api == client.api]) + cached
        rows += [r for r in recorded if r.api != client.api]
    else:
        ids = {r.job_id for r in recorded if r.api == client.api}
        seen = [
            dataclasses.replace(r, tool=our_tool(r.tool, r.api), vendor_tool=r.vendor_tool or r.tool)
            for r in own
            if r.job_id not in ids
        ]
        rows = recorded + cached + seen
    return usage_frame(rows)


def totals(df: pd.DataFrame) -> dict[str, Any]:
    """Totals per tool, per API and per day, for metadata and summaries."""
    charged = df[df["credits"] > 0]
    per_tool = charged.groupby("tool")["credits"].sum().round(3).to_dict()
    per_api = charged.groupby("api")["credits"].sum().round(3).to_dict()
    per_day = (
        charged.groupby(charged["timestamp"].dt.strftime("%Y-%m-%d"))["credits"].sum().round(3).to_dict()
    )
    return {
        "total": round(float(charged["credits"].sum()), 3),
        "per_tool": per_tool,
        "per_api": per_api,
        "per_day": per_day,
    }


def usage_summary(df: pd.DataFrame) -> pd.DataFrame:
    """The report in a few lines: batches, items, charges and credits per API and tool.

    One row per (api, tool), then a subtotal per API (``tool == "all"``) and the total
    (``api == tool == "all"``). ``items`` counts the inputs charged (an input charged twice,
    redone with ``force``, counts once); a charge whose input is unknown counts as one item.
    """
    import pandas as pd

    work = df.assign(
        _item=(df["batch"].fillna("") + "\0" + df["source"].fillna("")).where(
            df["source"].notna(), "row\0" + pd.Series(range(len(df)), index=df.index).astype(str)
        )
    )

    def row(part: pd.DataFrame, api: str, tool: str) -> dict[str, Any]:
        return {
            "api": api,
            "tool": tool,
            "batches": int(part["batch"].nunique()),
            "items": int(part["_item"].nunique()),
            "charges": int((part["kind"] != "cached").sum()),
            "credits": round(float(part["credits"].sum()), 3),
            "saved": round(float(part["saved"].sum()), 3),
        }

    rows = []
    for api in sorted(work["api"].dropna().unique()):
        part = work[work["api"] == api]
        rows += [row(p, api, tool) for tool, p in sorted(part.groupby("tool"), key=lambda kv: str(kv[0]))]
        rows.append(row(part, api, ALL))
    rows.append(row(work, ALL, ALL))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).astype(SUMMARY_COLUMNS)


def summary_text(summary: pd.DataFrame) -> str:
    """The summary as aligned plain text (for logs and terminals)."""
    return summary.to_string(index=False, formatters={"credits": credits_text})


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table, then the total in bold (for Dagster metadata)."""
    cols = list(SUMMARY_COLUMNS)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in summary.to_dict("records"):
        cells = [credits_text(rec[c]) if c in ("credits", "saved") else str(rec[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    total = float(summary["credits"].iloc[-1]) if len(summary) else 0.0
    return "\n".join([*lines, "", f"**Total: {credits_text(total)} credits**"])


def report_line(df: pd.DataFrame) -> str:
    """The report in one line, as its summary's total counts it: the charges and their credits,
    then the results served by the cache (0 credits) apart."""
    cached = df[df["kind"] == "cached"]
    line = f"{len(df) - len(cached)} charge(s), {credits_text(float(df['credits'].sum()))} credits"
    if len(cached):
        line += f", {len(cached)} cache hit(s) ({credits_text(float(cached['saved'].sum()))} credits saved)"
    return line


def write_report(df: pd.DataFrame, url: str, storage_options: dict[str, Any] | None = None) -> str:
    """CSV or Parquet by the URL's extension, written to any fsspec URL atomically."""
    import io

    buf = io.BytesIO()
    if url.endswith(".parquet"):
        df.to_parquet(buf, index=False)
    elif url.endswith(".csv"):
        df.to_csv(buf, index=False)
    else:
        raise ValueError(f"report URL {url!r} must end in .csv or .parquet")
    write_bytes_atomic(url, buf.getvalue(), storage_options)
    return url
