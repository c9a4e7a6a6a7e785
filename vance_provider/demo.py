"""``make demo``: the whole pipeline on the built-in simulator, end to end.

1. Writes a small real dataset (12 varied images and a short video) to demo-output/input/.
2. Starts the VanceAI simulator on a free loopback port.
3. Enhances the dataset through the Dagster assets (a real, temporary Dagster instance)
   and through the example Airflow DAG (a real metadata database, deferrable path).
4. Writes the credit-usage report, a before/after contact sheet and a credits chart,
   prints a summary, and leaves nothing running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .core import VanceClient, usage_frame, write_report
from .core.credits import records_from_manifests
from .demo_data import make_dataset
from .demo_pictures import contact_sheet, credits_chart
from .sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN, SimConfig, SimulatorServer

console = Console()
Step = Callable[[SimulatorServer, Path, Path], list[dict[str, Any]]]


def step_core(sim: SimulatorServer, inputs: Path, out: Path) -> list[dict[str, Any]]:
    """Fallback when Airflow or Dagster is missing: the same batches through the core engine."""
    from .core import BatchSpec

    rows = []
    for token, name, tool, config, pattern in (
        (DEMO_WEB_TOKEN, "images_upscaled", "upscale", {"scale": 2}, "*.[jp][pn]g"),
        (DEMO_OPEN_KEY, "video_upscaled", "video_upscale", {"scale": 2}, "*.mp4"),
    ):
        with VanceClient(token, base_url=sim.base_url) as client:
            r = client.run_batch(BatchSpec(str(inputs / pattern), str(out / name), tool, config,
                                           poll_interval=0.3))
        rows.append({"face": "core", "dataset": name, "api": client.api, **r.summary()})
    return rows


def _steps() -> list[tuple[str, Step]]:
    steps: list[tuple[str, Step]] = []
    try:
        from .demo_faces import step_airflow, step_dagster

        steps += [("Dagster", step_dagster), ("Airflow", step_airflow)]
    except ImportError as exc:
        console.print(f"[yellow]Airflow/Dagster demo steps unavailable ({exc}); using the core engine[/yellow]")
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
            console.print(f"[bold]{label}[/bold]: {sum(r['done'] for r in new)} outputs in {time.monotonic() - t0:.1f}s")
        # Usage: the web API's own history plus the Open API charges recorded in the manifests.
        with VanceClient(DEMO_WEB_TOKEN, base_url=sim.base_url) as web:
            records = list(web.usage())
        records += records_from_manifests(str(p) for p in out.rglob("_vance_manifest.json")
                                          if _api_of(p) == "open")
        df = usage_frame(records)
        ledger_total = sum(e.amount for e in sim.state.charges())
        double = sim.state.double_charges()
    report = write_report(df, str(out / "credit_usage.csv"))
    chart = credits_chart(df, out / "credits_per_tool.png")
    pairs = _pairs(inputs, out)
    sheet = contact_sheet(pairs, out / "contact_sheet.png")
    _print_summary(rows, df, ledger_total, double, [report, str(chart), str(sheet)], time.monotonic() - started)


def _api_of(manifest: Path) -> str:
    import json

    return json.loads(manifest.read_text()).get("meta", {}).get("api", "")


def _pairs(inputs: Path, out: Path) -> list[tuple[Path, Path]]:
    """Before/after pairs for every input image that has an output somewhere under ``out``."""
    outputs = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.suffix in (".jpg", ".png", ".webp") and inputs not in p.parents and \
                not p.name.startswith(("contact_sheet", "credits_per_tool")):
            outputs.setdefault(p.stem, p)
    return [(src, outputs[src.stem]) for src in sorted(inputs.iterdir()) if src.stem in outputs][:12]


def _print_summary(rows: list[dict[str, Any]], df: Any, ledger_total: float, double: list[str],
                   files: list[str], elapsed: float) -> None:
    table = Table(title="VanceAI demo summary")
    for col in ("face", "dataset", "api", "done", "failed", "skipped", "credits"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["face"], r["dataset"], r["api"], str(r["done"]), str(r["failed"]), str(r["skipped"]),
                      f"{r['credits_spent']:g}")
    console.print(table)
    reported = float(df["credits"].sum())
    console.print(f"credits in the usage report: {reported:g}; charged by the simulator's ledger: {ledger_total:g}; "
                  f"double charges: {len(double)}")
    console.print("files:")
    for f in files:
        console.print(f"  {f}")
    console.print(f"finished in {elapsed:.1f}s; nothing left running.")


if __name__ == "__main__":
    main()
