"""``make demo``: the whole pipeline on the built-in simulator, end to end.

1. Writes a small real dataset (12 varied images and a short video) to demo-output/input/.
2. Starts the VanceAI simulator on a free loopback port.
3. Enhances the dataset through the Dagster assets (a real, temporary Dagster instance)
   and through the example Airflow DAG (a real metadata database, deferrable path).
4. Writes the credit-usage report (one row per charge, both APIs) and its summary, a
   before/after contact sheet and two credit charts (per tool, over time), prints a summary,
   and leaves nothing running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..core import VanceClient, write_report
from ..core.reports.credits import usage_summary
from ..sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN, SimConfig, SimulatorServer
from .data import make_dataset
from .pictures import contact_sheet, credits_chart, credits_over_time_chart

console = Console()
Step = Callable[[SimulatorServer, Path, Path], list[dict[str, Any]]]


def step_core(sim: SimulatorServer, inputs: Path, out: Path) -> list[dict[str, Any]]:
    """Fallback when Airflow or Dagster is missing: the same batches through the core engine."""
    from ..core import BatchSpec

    rows = []
    for token, name, tool, config, pattern in (
        (DEMO_WEB_TOKEN, "images_upscaled", "upscale", {"scale": 2}, "*.[jp][pn]g"),
        (DEMO_OPEN_KEY, "video_upscaled", "video_upscale", {"scale": 2}, "*.mp4"),
    ):
        with VanceClient(token, base_url=sim.base_url) as client:
            r = client.run_batch(
                BatchSpec(str(inputs / pattern), str(out / name), tool, config, poll_interval=0.3)
            )
        rows.append({"face": "core", "dataset": name, "api": client.api, **r.summary()})
    return rows


def _steps() -> list[tuple[str, Step]]:
    steps: list[tuple[str, Step]] = []
    try:
        from .faces import step_airflow, step_dagster

        steps += [("Dagster", step_dagster), ("Airflow", step_airflow)]
    except ImportError as exc:
        console.print(
            f"[yellow]Airflow/Dagster demo steps unavailable ({exc}); using the core engine[/yellow]"
        )
        steps.append(("core", step_core))
    return steps


def main() -> None:
    started = time.monotonic()
    out = Path(os.environ.get("VANCE_DEMO_OUTPUT", "demo-output")).resolve()
    shutil.rmtree(out, ignore_errors=True)
    inputs = out / "input"
    make_dataset(inputs)
    console.rule("[bold]VanceAI pipelines demo")
    console.print(f"dataset: {len(list(inputs.iterdir()))} files in {inputs}")
    config = SimConfig(queue_delay=0.1, time_per_job=0.2, time_per_video_second=0.2)
    config.accounts[0].credits = 500.0
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vance-demo-") as tmp, SimulatorServer(config) as sim:
        os.environ["VANCE_DEMO_TMP"] = tmp
        console.print(f"simulator: {sim.base_url} (web API v1 + Open API v1)")
        for label, step in _steps():
            t0 = time.monotonic()
            console.print(f"[bold]{label}[/bold]: running…")
            new = step(sim, inputs, out)
            rows += new
            console.print(
                f"[bold]{label}[/bold]: {sum(r['done'] for r in new)} outputs in {time.monotonic() - t0:.1f}s"
            )
        # Usage: the web API's history, completed from the batches' manifests (input, output, job
        # id), and the Open API charges those manifests recorded: one row per charge.
        manifests = sorted(str(p) for p in out.rglob("_vance_manifest*.json"))
        with VanceClient(DEMO_WEB_TOKEN, base_url=sim.base_url) as web:
            df = web.usage_report(manifests)
        ledger_total = sum(e.amount for e in sim.state.charges())
        double = sim.state.double_charges()
    report = write_report(df, str(out / "credit_usage.csv"))
    summary = usage_summary(df)
    summary_csv = write_report(summary, str(out / "credit_summary.csv"))
    charts = [
        credits_chart(df, out / "credits_per_tool.png"),
        credits_over_time_chart(df, out / "credits_over_time.png"),
    ]
    pairs = _pairs(inputs, out)
    sheet = contact_sheet(pairs, out / "contact_sheet.png")
    folders = sorted(f"{p}/" for p in out.iterdir() if p.is_dir())  # inputs, outputs of each step, logs
    files = [report, summary_csv, *map(str, charts), str(sheet), *folders]
    _print_summary(rows, df, summary, ledger_total, double, files, time.monotonic() - started)


def _pairs(inputs: Path, out: Path) -> list[tuple[Path, Path]]:
    """Before/after pairs: every input that has an output somewhere under ``out``, once each.

    Where an input went through several tools, the pair shows the rarest one (the folder with the
    fewest outputs), so that every tool of the demo appears; pairs are grouped by output folder,
    the video last.
    """
    outputs: dict[str, list[Path]] = {}
    for p in sorted(out.rglob("*")):
        if (
            p.is_file()
            and p.suffix in (".jpg", ".png", ".webp", ".mp4")
            and p.parent != out
            and inputs not in p.parents
        ):
            outputs.setdefault(p.stem, []).append(p)
    per_folder = Counter(p.parent for found in outputs.values() for p in found)
    pairs = [
        (src, min(outputs[src.stem], key=lambda p: (per_folder[p.parent], str(p))))
        for src in sorted(inputs.iterdir())
        if src.stem in outputs
    ]
    return sorted(pairs, key=lambda pair: (pair[1].suffix == ".mp4", pair[1].parent.name, pair[0].name))


def _print_summary(
    rows: list[dict[str, Any]],
    df: Any,
    summary: Any,
    ledger_total: float,
    double: list[str],
    files: list[str],
    elapsed: float,
) -> None:
    table = Table(title="VanceAI demo summary")
    for col in ("face", "dataset", "api", "done", "failed", "skipped", "credits"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["face"],
            r["dataset"],
            r["api"],
            str(r["done"]),
            str(r["failed"]),
            str(r["skipped"]),
            f"{r['credits_spent']:g}",
        )
    console.print(table)
    usage = Table(title="Credits in the usage report (credit_summary.csv)")
    for col in summary.columns:
        usage.add_column(col, justify="left" if col in ("api", "tool") else "right")
    for rec in summary.to_dict("records"):
        usage.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in rec.values()))
    console.print(usage)
    reported = float(df["credits"].sum())
    console.print(
        f"credits in the usage report: {reported:g}; charged by the simulator's ledger: {ledger_total:g}; "
        f"double charges: {len(double)}"
    )
    console.print("files:")
    for f in files:
        console.print(f"  {f}")
    console.print(f"finished in {elapsed:.1f}s; nothing left running.")


if __name__ == "__main__":
    main()
