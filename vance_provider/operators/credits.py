"""The credit operators: a balance check before a batch, and a usage report written to storage.

The core and pandas are imported when a task runs, not when a DAG file is parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vance_provider._common import parse_list, vance_errors
from vance_provider.airflow_compat import AirflowFailException, SkipMixin
from vance_provider.object_storage import adopt_object_storage
from vance_provider.operators._base import VanceAIBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from vance_provider.core import VanceClient


class VanceAICreditCheckOperator(VanceAIBaseOperator, SkipMixin):
    """Check the balance covers a batch before it starts; fail, or skip everything downstream.

    The need is ``min_credits`` when given, else the number of inputs under ``source`` times the
    tool's per-job estimate (inputs already done in ``destination``'s manifest are not counted).
    Costs no credits.

    :param on_insufficient: ``fail`` (default) or ``skip`` (short-circuit: downstream tasks are skipped).
    :param margin: extra credits to keep in reserve.
    """

    template_fields: Sequence[str] = (
        "source",
        "destination",
        "tool",
        "config",
        "min_credits",
        "storage_conn_id",
    )
    template_fields_renderers = {"config": "json"}

    def __init__(
        self,
        *,
        source: str | list[str] | None = None,
        tool: str | None = None,
        config: dict[str, Any] | None = None,
        destination: str | None = None,
        min_credits: float | None = None,
        margin: float = 0.0,
        on_insufficient: str = "fail",
        **kwargs: Any,
    ) -> None:
        if on_insufficient not in ("fail", "skip"):
            raise ValueError(f"on_insufficient must be 'fail' or 'skip', got {on_insufficient!r}")
        if min_credits is None and (source is None or tool is None):
            raise ValueError("give min_credits, or source and tool to estimate from")
        source, destination = adopt_object_storage(kwargs, source, destination)
        super().__init__(**kwargs)
        self.source, self.tool, self.config, self.destination = source, tool, config, destination
        self.min_credits, self.margin, self.on_insufficient = min_credits, margin, on_insufficient

    def _estimate(self, client: VanceClient) -> tuple[float, int | None]:
        if self.min_credits is not None and self.min_credits != "":
            return float(self.min_credits), None
        from vance_provider.core.state.manifest import ItemState, Manifest
        from vance_provider.core.state.storage import list_sources

        if self.source is None or self.tool is None:
            raise AirflowFailException("give min_credits, or source and tool to estimate from")
        so = self.hook.storage_options
        sources = list_sources(self.source, None, so)
        done: set[tuple[str, str]] = set()
        if self.destination:
            manifest = Manifest.for_destination(self.destination, so).load()
            done = {(i.source, i.fingerprint) for i in manifest.items.values() if i.state == ItemState.DONE}
        todo = [s for s in sources if (s.url, s.fingerprint) not in done]
        per_job = client.tool_call(self.tool, self.config).estimate()
        return len(todo) * per_job, len(todo)

    def execute(self, context: Context) -> dict[str, Any]:
        with vance_errors(), self.hook.get_client() as client:
            need, inputs = self._estimate(client)
            balance = client.balance()
            api = client.api
        need_total = need + self.margin
        info = {
            "api": api,
            "available": balance.available,
            "needed": need_total,
            "inputs": inputs,
            "ok": balance.available + 1e-9 >= need_total,
        }
        self.log.info(
            "VanceAI credits: %g available, %g needed%s",
            balance.available,
            need_total,
            f" for {inputs} input(s)" if inputs is not None else "",
        )
        if info["ok"]:
            return info
        message = f"VanceAI balance {balance.available:g} is below the {need_total:g} credits needed"
        if self.on_insufficient == "fail":
            raise AirflowFailException(message + " (top up, or shrink the batch)")
        self.log.warning("%s: skipping downstream tasks", message)
        to_skip = [t for t in context["task"].get_flat_relatives(upstream=False) if not t.is_teardown]
        if to_skip:
            self.skip(ti=context["ti"], tasks=to_skip)
        return info


def _utc(value: Any) -> Any:
    import pandas as pd

    ts = pd.Timestamp(str(value))
    return ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")


class VanceAICreditReportOperator(VanceAIBaseOperator):
    """Write the account's credit usage to CSV or Parquet (by the URL's extension) on any fsspec URL.

    The web API reports the full history; the Open API keeps none, so pass the ``manifests`` of
    past batches (their recorded charges are used). ``start``/``end`` (ISO dates or datetimes,
    templated - e.g. ``{{ data_interval_start }}``) narrow the report. Returns the totals.
    """

    template_fields: Sequence[str] = ("destination", "manifests", "start", "end", "storage_conn_id")

    def __init__(
        self,
        *,
        destination: str,
        manifests: list[str] | str | None = None,
        start: Any = None,
        end: Any = None,
        **kwargs: Any,
    ) -> None:
        if not str(destination).endswith((".csv", ".parquet")) and "{{" not in str(destination):
            raise ValueError(f"destination {destination!r} must end in .csv or .parquet")
        super().__init__(**kwargs)
        self.destination, self.manifests, self.start, self.end = destination, manifests, start, end

    def execute(self, context: Context) -> dict[str, Any]:
        from vance_provider.core.reports.credits import (
            report_line,
            summary_text,
            totals,
            usage_summary,
            write_report,
        )

        manifests = parse_list(self.manifests)
        so = self.hook.storage_options
        with vance_errors(), self.hook.get_client() as client:
            df = client.usage_report(manifests, so)
            api = client.api
        if self.start:
            df = df[df["timestamp"] >= _utc(self.start)]
        if self.end:
            df = df[df["timestamp"] < _utc(self.end)]
        url = write_report(df.reset_index(drop=True), self.destination, so)
        table = usage_summary(df)  # per API and tool, as `vance report` and the Dagster asset make it
        summary = {"url": url, "api": api, "rows": len(df), **totals(df), "summary": table.to_dict("records")}
        self.log.info("VanceAI usage report: %s -> %s\n%s", report_line(df), url, summary_text(table))
        return summary
