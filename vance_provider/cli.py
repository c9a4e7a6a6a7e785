"""``vance``: enhance files, check jobs and credits, and export usage from a terminal.

The token comes from ``VANCE_API_TOKEN`` (never from an argument, which would
show in shell history and process lists); the base URL from ``VANCE_BASE_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .core import BatchSpec, VanceClient, VanceError, write_report
from .core.batch import Progress as BatchProgress
from .core.credits import totals

console = Console(stderr=True)


def _client(args: argparse.Namespace) -> VanceClient:
    token = os.environ.get("VANCE_API_TOKEN", "")
    if not token:
        raise SystemExit("vance: set VANCE_API_TOKEN to your VanceAI token (web API v1 or an sk_live_ key)")
    return VanceClient(token, api=args.api, base_url=os.environ.get("VANCE_BASE_URL") or None, caller="cli")


def cmd_enhance(args: argparse.Namespace) -> int:
    config: dict[str, Any] = json.loads(args.config) if args.config else {}
    if args.scale is not None:
        config["scale"] = args.scale
    spec = BatchSpec(
        source=args.source,
        destination=args.destination,
        tool=args.tool,
        config=config or None,
        output_format=args.output_format,
        max_concurrency=args.max_concurrency,
        credit_budget=args.budget,
        force=args.force,
        on_failure="continue",
        poll_interval=args.poll_interval,
        on_insufficient_credits="partial" if args.partial else "fail",
    )
    with (
        _client(args) as client,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[credits]} credits"),
            TimeElapsedColumn(),
            console=console,
        ) as bar,
    ):
        task = bar.add_task(f"{args.tool}", total=None, credits=0)

        def on_progress(p: BatchProgress) -> None:
            bar.update(
                task, total=p.total, completed=p.done + p.failed + p.skipped, credits=f"{p.credits_spent:g}"
            )

        result = client.run_batch(spec, on_progress)
    table = Table(title=f"vance enhance: {args.tool}")
    for col in ("done", "failed", "skipped", "credits", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.done),
        str(result.failed),
        str(result.skipped),
        f"{result.credits_spent:g}",
        f"{result.elapsed:.1f}",
    )
    Console().print(table)
    for item in result.items:
        if item.state == "failed":
            console.print(f"[red]failed[/red] {item.source}: {item.error}")
    if result.stopped:
        console.print(f"[yellow]stopped early:[/yellow] {result.stopped}")
    console.print(f"manifest: {result.manifest}")
    return 1 if result.failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        table = Table("job", "status", "vendor status", "progress", "error")
        for job_id in args.job_ids:
            job = client.get_job(job_id)
            table.add_row(
                job.id, job.status.value, job.raw_status, str(job.progress or ""), job.error_message or ""
            )
        Console().print(table)
    return 0


def cmd_credits(args: argparse.Namespace) -> int:
    with _client(args) as client:
        b = client.balance()
    Console().print(f"available {b.available:g}  used {b.used:g}  frozen {b.frozen:g}  ({client.api} API)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    with _client(args) as client:
        df = client.usage_report(args.manifest)
    write_report(df, args.out)
    t = totals(df)
    Console().print(f"{len(df)} record(s), {t['total']:g} credits, written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vance", description="VanceAI image and video enhancement from a terminal."
    )
    p.add_argument(
        "--api",
        choices=("auto", "web", "open", "visioncraft"),
        default="auto",
        help="which VanceAI API; auto: sk_live_ keys use the Open API v1",
    )
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enhance", help="enhance a file, a folder/prefix, a glob or several URLs")
    e.add_argument("source", nargs="+", help="fsspec URL(s): file, folder, prefix or glob")
    e.add_argument("destination", help="output folder/prefix (fsspec URL)")
    e.add_argument(
        "--tool", required=True, help="upscale, denoise, sharpen, remove_bg, ... or a web API module"
    )
    e.add_argument("--scale", type=int, help="shortcut for --config '{\"scale\": N}'")
    e.add_argument("--config", help="tool options as JSON")
    e.add_argument("--output-format", choices=("jpg", "png", "webp"))
    e.add_argument("--max-concurrency", type=int, default=8)
    e.add_argument("--poll-interval", type=float, default=1.0, help="seconds before the first status poll")
    e.add_argument("--budget", type=float, help="spend at most this many credits")
    e.add_argument("--force", action="store_true", help="redo inputs already done")
    e.add_argument("--partial", action="store_true", help="when credits are short, do what they cover")
    e.set_defaults(func=cmd_enhance)
    s = sub.add_parser("status", help="show jobs")
    s.add_argument("job_ids", nargs="+")
    s.set_defaults(func=cmd_status)
    c = sub.add_parser("credits", help="show the credit balance")
    c.set_defaults(func=cmd_credits)
    r = sub.add_parser("report", help="write the credit-usage report")
    r.add_argument("--out", required=True, help="usage.csv or usage.parquet (any fsspec URL)")
    r.add_argument(
        "--manifest",
        action="append",
        default=[],
        help="batch manifest(s) whose charges to include (Open API)",
    )
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "enhance" and len(args.source) == 1:
        args.source = args.source[0]
    try:
        sys.exit(args.func(args))
    except VanceError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


__all__ = ["main"]
