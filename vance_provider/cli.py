"""``vance``: enhance files, check jobs and credits, and export usage from a terminal.

The token comes from ``VANCE_API_TOKEN`` (never from an argument, which would show in shell
history and process lists); the base URL from ``VANCE_BASE_URL``.

Every error is one ``error:`` line, then a ``hint:`` in this command's words (its flags and
environment variables, not the Python parameters of the library), and a documented exit code
(``EXIT_CODES``; ``docs/cli.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .core.api.errors import (
    AuthenticationError,
    BatchLockedError,
    BudgetExceededError,
    ConfigurationError,
    InsufficientCreditsError,
    InvalidInputError,
    InvalidRequestError,
    NotFoundError,
    TransportError,
    VanceError,
)
from .core.api.models import API_CHOICES, API_NAMES, API_TITLES, credits_text
from .core.secrets import redact, redact_url
from .core.state.storage import StorageUnavailableError
from .defaults import DEFAULT_API, DEFAULT_MAX_CONCURRENCY

EXIT_OK = 0
EXIT_FAILED_ITEMS = 1
EXIT_USAGE = 2
EXIT_CREDITS = 3
EXIT_LOCKED = 4
EXIT_SERVICE = 5
EXIT_INTERRUPTED = 130
EXIT_HANGUP = 129  # 128 + SIGHUP
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED_ITEMS: "the command ran, but some items failed (listed on stderr)",
    EXIT_USAGE: "usage or configuration: a flag, the token, the tool or its config, an input, "
    "a manifest of another batch; nothing was spent",
    EXIT_CREDITS: "credits: over --budget, or more than the balance; nothing was spent",
    EXIT_LOCKED: "another run is working on this batch (see --wait-lock)",
    EXIT_SERVICE: "the service or the network failed (after retries); rerun to resume",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); rerun the same command to resume",
    EXIT_HANGUP: "stopped by SIGHUP (a closed terminal), as by Ctrl-C; rerun the same command to resume",
    EXIT_TERMINATED: "stopped by SIGTERM (Airflow, Kubernetes, kill), as by Ctrl-C; rerun the same "
    "command to resume",
}
# The service's endpoint names, as the library's messages give them, in the words of a user.
OPERATIONS = {
    "point": "balance",
    "points/record": "usage history",
    "credits": "balance",
    "upload": "upload",
    "uploads": "upload",
    "transform": "job creation",
    "progress": "job status",
    "jobs": "job",
    "create_job": "job creation",
    "get_job": "job status",
    "cancel": "job cancel",
    "delete": "job delete",
    "result": "result",
    "download": "download",
}
# The library's words (Python parameters, Airflow connection fields) -> this command's words.
CLI_WORDS: list[tuple[str, str]] = [
    (r"(?:use |pass )?on_insufficient_credits='partial'", "pass --partial"),
    (r"\bcredit_budget\b", "--budget"),
    (r"\(?lock_timeout / --wait-lock\)?", "(--wait-lock SECONDS)"),
    (r"\block_timeout\b", "--wait-lock"),
    (r"\bfresh=True \(--fresh\)", "--fresh"),
    (r"\bfresh=True\b", "--fresh"),
    (r"\bforce=True\b", "--force"),
    (r"\boverwrite=True \(--overwrite\)", "--overwrite"),
    (r"\(?cache_optional=True, --cache-optional\)?", "--cache-optional"),
    (r"\bmax_concurrency\b", "--max-concurrency"),
    (r"\boutput_format\b", "--output-format"),
    (r"\bpoll_interval\b", "--poll-interval"),
    (r"\bapi='(\w+)'", r"--api \1"),
    (r", or pass allow_empty=True", ""),
    (r"use tool= and config= on the Open API", "use --tool and --config"),
    (r"(?:the )?sk_live_ key of the connection", "the key in VANCE_API_TOKEN"),
    (r"(?:the )?API token of the connection", "the token in VANCE_API_TOKEN"),
    (r"VANCE_API_TOKEN or the connection's password", "VANCE_API_TOKEN"),
    (r"the connection's password", "VANCE_API_TOKEN"),
    (r"the connection's host", "VANCE_BASE_URL"),
]
_API_OP = re.compile(rf"\b({'|'.join(API_NAMES)}) API ([\w/]+):", re.I)


class CliError(Exception):
    """A mistake on the command line, caught before the library is called."""

    def __init__(self, message: str, hint: str | None = None, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def cli_words(text: str) -> str:
    """A library message or hint in this command's words."""
    for pattern, replacement in CLI_WORDS:
        text = re.sub(pattern, replacement, text)

    def op(m: re.Match[str]) -> str:
        if m[2] not in OPERATIONS:  # "web API tools: ..." is words already
            return m[0]
        return f"{API_TITLES.get(m[1].lower(), m[1])} ({OPERATIONS[m[2]]}):"

    return _API_OP.sub(op, text)


def exit_code(exc: BaseException) -> int:
    """The documented exit code of an error (``EXIT_CODES``)."""
    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, BatchLockedError):
        return EXIT_LOCKED
    if isinstance(exc, (BudgetExceededError, InsufficientCreditsError)):
        return EXIT_CREDITS
    if isinstance(
        exc, (ConfigurationError, InvalidInputError, AuthenticationError, InvalidRequestError, NotFoundError)
    ):
        return EXIT_USAGE
    return EXIT_SERVICE


def _console(stderr: bool = False) -> Console:
    """A console that wraps only on a terminal: piped into a file or a program, a line stays a line."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=10_000, soft_wrap=True)
    return console


class Ui:
    """Where the command writes: results to stdout, progress, warnings and errors to stderr."""

    def __init__(self) -> None:
        self.out, self.err = _console(), _console(stderr=True)

    def warning(self, message: str) -> None:
        self.err.print(f"warning: {escape(cli_words(message))}")

    def error(self, exc: BaseException, base_url: str | None = None, prefix: str = "") -> int:
        if isinstance(exc, (VanceError, CliError)):
            message, hint = cli_words(exc.message), cli_words(exc.hint) if exc.hint else None
        else:
            message, hint = redact(f"{type(exc).__name__}: {exc}"), None
        if isinstance(exc, TransportError) and not isinstance(exc, StorageUnavailableError) and base_url:
            message += f" at {redact_url(base_url)}"
            hint = hint or (
                "is the service running at that address? Check VANCE_BASE_URL and the network "
                "(for the local simulator: vance-sim serve)"
            )
        self.err.print(f"error: {escape(prefix + message)}")
        if hint:
            self.err.print(f"hint: {escape(hint)}")
        return exit_code(exc)


class _Warnings(logging.Handler):
    """The library's warnings (a lease taken over, a manifest archived, ...) as ``warning:`` lines."""

    def __init__(self, ui: Ui) -> None:
        super().__init__(logging.WARNING)
        self.ui = ui

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.ui.warning(record.getMessage())
        except Exception:  # a warning must never break the command
            self.handleError(record)


def _token() -> str:
    token = os.environ.get("VANCE_API_TOKEN", "")
    if not token.strip():
        raise CliError(
            "no API token: VANCE_API_TOKEN is not set",
            "export VANCE_API_TOKEN=<your web API v1 token, or Open API v1 key sk_live_...>; "
            "for the local simulator, `vance-sim serve` prints the tokens it accepts",
        )
    return token


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "api": args.api,
        "base_url": os.environ.get("VANCE_BASE_URL") or None,
        "caller": "cli",
        "account_store": getattr(args, "account_store", None),
        "account_max_jobs": getattr(args, "account_max_jobs", None),
    }


def _client(args: argparse.Namespace) -> Any:
    from .core import VanceClient

    client = VanceClient(_token(), **_client_options(args))
    args.base_url = client.base_url
    return client


def _json_config(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError as exc:
        where = f"line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise CliError(
            f"--config is not valid JSON: {reason} ({where})",
            "write a JSON object, keys in double quotes: --config '{\"scale\": 2}'",
        ) from None
    if not isinstance(config, dict):
        raise CliError(
            f"--config must be a JSON object, got a JSON {type(config).__name__}",
            "for example --config '{\"scale\": 2}'",
        )
    return config


def _manifests(paths: list[str]) -> list[str]:
    """Manifest URLs: a manifest file as is; a batch's folder gives its manifest and archived ones."""
    from fsspec.core import url_to_fs

    from .core.state.manifest import MANIFEST_NAME
    from .core.state.storage import join

    found: list[str] = []
    for path in paths:
        fs, fs_path = url_to_fs(path)
        if path.endswith(".json"):
            if not fs.exists(fs_path):
                raise CliError(f"--manifest {path}: no such file", "give a batch's manifest or its folder")
            found.append(path)
            continue
        stem = MANIFEST_NAME.rsplit(".", 1)[0]
        matches = sorted(fs.glob(f"{fs_path.rstrip('/')}/{stem}*.json"))
        if not matches:
            raise CliError(
                f"--manifest {path}: no {MANIFEST_NAME} in this folder",
                "give the destination folder of a `vance enhance` batch, or its manifest file",
            )
        protocol = path.split("://", 1)[0] + "://" if "://" in path else ""
        found += [join(path, m.rsplit("/", 1)[-1]) if protocol else m for m in matches]
    return found


# --- commands ---------------------------------------------------------------------------------------
def cmd_enhance(args: argparse.Namespace, ui: Ui) -> int:
    from .core import AsyncVanceClient, BatchSpec
    from .core.batch.runner import manifest_for, run_batch
    from .core.batch.spec import Progress as BatchProgress

    config = _json_config(args.config)
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
        account_budget=args.account_budget,
        force=args.force,
        on_failure="continue",
        poll_interval=args.poll_interval,
        on_insufficient_credits="partial" if args.partial else "fail",
        fresh=args.fresh,
        lock_timeout=args.wait_lock,
        cache=args.cache,
        cache_optional=args.cache_optional,
        overwrite=args.overwrite,
    )
    token = _token()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[credits]} credits"),
        TimeElapsedColumn(),
        console=ui.err,
        transient=True,  # gone when the batch ends (or fails): the summary or the error replaces it
        redirect_stderr=False,  # warnings go through the console (``_warnings``), above the bar
        disable=not ui.err.is_terminal,  # piped or in a file: no bar, only the results
    )

    received: list[int] = []
    earlier = _done_before(manifest_for(spec))

    async def run() -> Any:
        # SIGTERM (Airflow, Kubernetes, systemd) and SIGHUP (a closed terminal) stop the batch as
        # Ctrl-C does: no new job, the jobs in flight kept in the manifest, the lease released.
        with stop_on_signals(received):
            return await run_client()

    async def run_client() -> Any:
        async with AsyncVanceClient(token, **_client_options(args)) as client:
            args.base_url = client.base_url
            task = None

            def on_progress(p: BatchProgress) -> None:
                nonlocal task
                if task is None:  # shown once there is something to show
                    bar.start()
                    task = bar.add_task(escape(args.tool), total=p.total, credits="0")
                done = p.done + p.failed + p.skipped
                bar.update(task, total=p.total, completed=done, credits=credits_text(p.credits_spent))

            try:
                return await run_batch(client, spec, on_progress)
            finally:
                bar.stop()

    try:
        result = asyncio.run(run())
    except KeyboardInterrupt:
        ui.err.print(escape(_interrupted(manifest_for(spec))))
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:
        if not received:
            raise
        name = signal.Signals(received[0]).name
        ui.err.print(escape(_interrupted(manifest_for(spec), name)))
        return 128 + received[0]
    table = Table(title=f"vance enhance: {escape(args.tool)}")
    for col in ("done", "failed", "skipped", "credits", "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.done),
        str(result.failed),
        str(result.skipped),
        credits_text(result.credits_spent),
        f"{result.elapsed:.1f}",
    )
    ui.out.print(table)
    for item in result.items:
        if item.state == "failed":
            ui.err.print(f"failed: {escape(item.source)}: {escape(cli_words(item.error or ''))}")
    for url, reason in getattr(result, "ignored", [])[:20]:
        ui.err.print(f"ignored: {escape(url)}: {escape(reason)}")
    if result.stopped:
        ui.err.print(f"stopped early: {escape(cli_words(result.stopped))}")
    taken_over = getattr(result, "credits_taken_over", 0.0)
    if taken_over:
        ui.err.print(
            f"taken over: {credits_text(taken_over)} credits of results an earlier run had already "
            "paid for (or may have: its download or job had begun); not charged again, not counted above"
        )
    kept = sum(1 for i in result.items if i.state == "done" and earlier.get(i.source) == i.job_id)
    if kept:
        ui.err.print(
            f"already done in an earlier run: {kept} item(s), kept (counted as done, not paid again)"
        )
    converted = _converted_formats(result.items) if not args.output_format else {}
    for (source_format, output_format), count in sorted(converted.items()):
        hint = "; --output-format chooses jpg, png or webp" if output_format == "jpg" else ""
        ui.err.print(
            f"format: {count} {source_format} input(s) stored as {output_format}, the API's default{hint}"
        )
    cached = sum(1 for i in result.items if i.cached)
    if cached:
        ui.err.print(f"from the cache: {cached} item(s), {credits_text(result.credits_saved)} credits saved")
    ui.err.print(f"manifest: {escape(result.manifest)}")
    return EXIT_FAILED_ITEMS if result.failed else EXIT_OK


def _converted_formats(items: Any) -> dict[tuple[str, str], int]:
    """How many images the batch stored in another format than their input's, per (input format,
    output format)."""

    def ext(url: str) -> str:
        name = url.rsplit("/", 1)[-1]
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        return "jpg" if suffix == "jpeg" else suffix

    counts: dict[tuple[str, str], int] = {}
    for item in items:
        if item.state != "done" or not item.output:
            continue
        source, output = ext(item.source), ext(item.output)
        if source in ("jpg", "png", "webp") and output in ("jpg", "png", "webp") and source != output:
            counts[source, output] = counts.get((source, output), 0) + 1
    return counts


def _done_before(manifest: Any) -> dict[str, str | None]:
    """The inputs a batch's manifest records as done (input -> job id), before a run: the run's
    items that are still these were kept, not processed again."""
    try:
        items = manifest.load().items.values()
    except Exception:  # no manifest yet, or one the run itself will refuse with its reason
        return {}
    return {i.source: i.job_id for i in items if i.state == "done"}


@contextlib.contextmanager
def stop_on_signals(received: list[int]) -> Iterator[None]:
    """Within a running event loop: SIGTERM and SIGHUP cancel the current task (as Ctrl-C does)
    and are noted in ``received``. Outside the main thread, or where the loop cannot take signal
    handlers, nothing changes."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    installed = []
    for sig in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)):
        if sig is None or task is None:
            continue

        def stop(sig: int = sig) -> None:
            if not received:  # the first signal stops the batch; the rest wait for it to stop
                received.append(sig)
                task.cancel()

        try:
            loop.add_signal_handler(sig, stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _interrupted(manifest: Any, by: str = "") -> str:
    """One line after Ctrl-C (or ``by`` a signal): what is safe, and how to resume."""
    from .core.state.manifest import ItemState

    what = f"stopped by {by}" if by else "interrupted"
    try:
        items = list(manifest.load().items.values())
    except Exception:
        return f"{what}; run the same command again to resume"
    stored = sum(1 for i in items if i.state == ItemState.DONE)
    flying = sum(1 for i in items if i.state in (ItemState.SUBMITTED, ItemState.SUCCEEDED) and i.job_id)
    return (
        f"{what}: {stored} of {len(items)} item(s) stored, {flying} job(s) in flight kept in "
        f"{manifest.url}; run the same command again to resume (nothing is paid twice)"
    )


def cmd_status(args: argparse.Namespace, ui: Ui) -> int:
    from .core.state.manifest import Manifest

    job_ids = list(args.job_ids)
    for url in _manifests(args.manifest):
        job_ids += [i.job_id for i in Manifest(url).load().items.values() if i.job_id]
    if not job_ids:
        raise CliError("no job ids given", "give job ids, or --manifest with a batch's folder")
    failures: list[tuple[str, VanceError]] = []
    table = Table("job", "status", "vendor status", "progress", "error")
    with _client(args) as client:
        for job_id in dict.fromkeys(job_ids):
            try:
                job = client.get_job(job_id)
            except VanceError as exc:
                failures.append((job_id, exc))
                continue
            table.add_row(
                escape(job.id),
                job.status.value,
                escape(job.raw_status),
                str(job.progress if job.progress is not None else ""),
                escape(job.error_message or ""),
            )
    if table.row_count:
        ui.out.print(table)
    codes = [ui.error(exc, args.base_url, prefix=f"job {job_id}: ") for job_id, exc in failures]
    return max(codes, default=EXIT_OK)


def cmd_credits(args: argparse.Namespace, ui: Ui) -> int:
    with _client(args) as client:
        b = client.balance()
    ui.out.print(
        f"available {credits_text(b.available)}  used {credits_text(b.used)}  frozen {credits_text(b.frozen)}  ({client.api} API)"
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace, ui: Ui) -> int:
    from .core.reports.credits import report_line, usage_summary, write_report

    manifests = _manifests(args.manifest)
    with _client(args) as client:
        df = client.usage_report(manifests)
        api, caps, base_url = client.api, client.capabilities, client.base_url
    write_report(df, args.out)
    summary = usage_summary(df)
    table = Table(title="credits used")
    for col in summary.columns:
        table.add_column(col, justify="right" if col not in ("api", "tool") else "left")
    for rec in summary.to_dict("records"):
        table.add_row(*(credits_text(v) if isinstance(v, float) else escape(str(v)) for v in rec.values()))
    ui.out.print(table)
    ui.out.print(f"{escape(report_line(df))}, written to {escape(args.out)}")
    _show_account_budgets(ui, base_url, getattr(args, "account_store", None))
    if caps.charges_credits and not caps.has_usage_history and not manifests:
        ui.err.print(
            f"note: the {API_TITLES[api]} keeps no history; give --manifest with your "
            "batches' folders to include what they paid"
        )
    return EXIT_OK


# --- parsing ----------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.default not in (None, False, [], argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line and a hint, exit code 2."""

    def error(self, message: str) -> Any:
        sys.stderr.write(f"error: {message}\nhint: see `{self.prog} --help`\n")
        sys.exit(EXIT_USAGE)


def _report_path(value: str) -> str:
    if not value.endswith((".csv", ".parquet")):
        raise argparse.ArgumentTypeError(f"{value!r} must end in .csv or .parquet")
    return value


def _number(kind: Callable[[str], float], what: str, least: float, give: str, finite: bool = False) -> Any:
    """An argparse type: the text as ``kind``, at least ``least`` (and not infinite, if ``finite``)."""

    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None
        if not number >= least or (finite and number == float("inf")):
            raise argparse.ArgumentTypeError(f"{value!r}: give {give}")
        return number

    return parse


_credits = _number(float, "a number of credits", 0, "0 or more credits", finite=True)
_positive = _number(int, "a whole number", 1, "a whole number of 1 or more")
_seconds = _number(float, "a number of seconds", 0, "0 or more seconds")


def _interval(value: str) -> float:
    """A poll interval: a finite number of seconds over 0."""
    seconds = _seconds(value)
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of seconds over 0, such as 2")
    return seconds


def cmd_cache(args: argparse.Namespace, ui: Ui) -> int:
    from .core.state.cache import ResultCache

    if not args.cache:
        raise CliError("no cache given", hint="pass --cache URL or set VANCE_CACHE")
    cache = ResultCache(args.cache)
    if args.cache_command == "prune":
        r = cache.prune(args.older_than, dry_run=args.dry_run)
        verb = "would remove" if r.dry_run else "removed"
        ui.out.print(f"{verb} {r.entries} entries, {r.bytes} bytes")
    else:
        st = cache.stats()
        ui.out.print(
            f"{st.entries} entries, {st.bytes} bytes; {st.hits} hits saved {credits_text(st.credits_saved)} credits"
        )
    return EXIT_OK


def _budget_line(b: Any) -> str:
    when = "in total" if b.period == "total" else f"a {b.period} ({b.period_key})"
    return (
        f"{b.name}: {credits_text(b.credits)} credits {when}: {credits_text(b.spent)} spent, "
        f"{credits_text(b.reserved)} reserved by jobs in flight, {credits_text(b.remaining)} left"
    )


def cmd_budget(args: argparse.Namespace, ui: Ui) -> int:
    """Account-wide budgets, shared by every worker of the account (docs/account.md)."""
    from .core.account import get_budgets, set_budget

    with _client(args) as client:  # for its base URL (the account is the key at that address)
        where = {"api_base_url": client.base_url, "api_key": _token(), "store_url": args.store}
    if args.budget_command == "set":
        ui.out.print(_budget_line(set_budget(args.name, args.credits, args.period, **where)))
        return EXIT_OK
    budgets = get_budgets(**where)
    for b in budgets:
        ui.out.print(_budget_line(b))
    if not budgets:
        ui.out.print("no budgets: `vance budget set NAME CREDITS --period day|month|total` sets one")
    return EXIT_OK


def _show_account_budgets(ui: Ui, base_url: str, store: str | None) -> None:
    """The account's named budgets (spent, reserved, left), under the credit report, where an
    account store is in use and holds any."""
    from .core.account import get_budgets, store_url

    if store_url(store).lower() in ("none", "memory", "memory://"):
        return
    try:
        budgets = get_budgets(api_base_url=base_url, api_key=_token(), store_url=store)
    except VanceError as exc:
        ui.err.print(f"note: the account's budgets could not be read: {escape(exc.message)}")
        return
    for b in budgets:
        ui.out.print(f"budget {_budget_line(b)}")


def _age(value: str) -> float:
    from .core.state.cache import parse_age

    try:
        return parse_age(value)
    except VanceError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message} ({exc.hint})") from None


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())
    p = _Parser(
        prog="vance",
        description="VanceAI image and video enhancement from a terminal.\n\n"
        "The token comes from VANCE_API_TOKEN, the service's address from VANCE_BASE_URL.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--api",
        choices=API_CHOICES,
        default=DEFAULT_API,
        help="which API; auto: sk_live_ keys use the Open API v1, other tokens the web API v1",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def command(name: str, text: str, func: Callable[[argparse.Namespace, Ui], int]) -> Any:
        s = sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        s.set_defaults(func=func)
        return s

    e = command("enhance", "enhance a file, a folder/prefix, a glob or several URLs (resumable)", cmd_enhance)
    e.add_argument("source", nargs="+", help="fsspec URL(s): file, folder, prefix or glob")
    e.add_argument("destination", help="output folder/prefix (fsspec URL)")
    e.add_argument("--tool", required=True, help="upscale, denoise, sharpen, remove_bg, ... (docs/tools.md)")
    e.add_argument("--scale", type=int, help="shortcut for --config '{\"scale\": N}'")
    e.add_argument("--config", help="tool options as a JSON object, e.g. '{\"scale\": 4}'")
    e.add_argument("--output-format", choices=("jpg", "png", "webp"))
    e.add_argument(
        "--max-concurrency", type=_positive, default=DEFAULT_MAX_CONCURRENCY, help="jobs in flight at once"
    )
    e.add_argument(
        "--poll-interval", type=_interval, default=1.0, help="seconds before the first status poll (over 0)"
    )
    e.add_argument("--budget", type=_credits, help="spend at most this many credits")
    e.add_argument(
        "--account-budget",
        metavar="NAME",
        help="draw on the account's named budget (vance budget set), shared by every worker",
    )
    e.add_argument(
        "--account-store",
        metavar="URL",
        help="where workers of the account share its rate, job cap and budgets: local, "
        "redis://host:6379/0, postgresql://user:pass@host/db, none (default: VANCE_ACCOUNT_STORE, "
        "else local)",
    )
    e.add_argument(
        "--account-max-jobs",
        type=int,
        metavar="N",
        help="the account's cap on jobs in flight, shared by every worker (VANCE_ACCOUNT_MAX_JOBS)",
    )
    e.add_argument(
        "--partial", action="store_true", help="when credits or --budget are short, do what they cover"
    )
    e.add_argument("--force", action="store_true", help="redo inputs already done (pays again)")
    e.add_argument(
        "--fresh",
        action="store_true",
        help="start the batch afresh: the old manifest is archived beside it; the outputs already in "
        "the destination are kept (refused if an output would replace one, unless --overwrite)",
    )
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="allow outputs to replace files already in the destination that this batch did not "
        "write (another batch's paid results, say)",
    )
    e.add_argument(
        "--wait-lock",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run of the same batch to finish (0: fail at once)",
    )
    e.add_argument(
        "--cache",
        metavar="URL",
        default=os.environ.get("VANCE_CACHE"),
        help="a result cache (fsspec URL, or VANCE_CACHE): results already paid for are copied, not paid again",
    )
    e.add_argument(
        "--cache-optional",
        action="store_true",
        help="if the --cache cannot be used (a file, read-only), run without it instead of refusing",
    )
    s = command("status", "show jobs: their ids, or those of a batch", cmd_status)
    s.add_argument("job_ids", nargs="*", help="job ids")
    s.add_argument(
        "--manifest", action="append", default=[], help="a batch's folder or manifest: show its jobs"
    )
    command("credits", "show the credit balance (costs nothing)", cmd_credits)
    r = command("report", "write the credit-usage report (CSV or Parquet) and print its summary", cmd_report)
    r.add_argument(
        "--out", required=True, type=_report_path, help="usage.csv or usage.parquet (any fsspec URL)"
    )
    r.add_argument(
        "--manifest",
        action="append",
        default=[],
        help="a batch's folder or manifest, for its inputs, outputs and job ids (repeatable; "
        "the Open API keeps no history, so its charges come only from these)",
    )
    c = command("cache", "the result cache: statistics and pruning (docs/cache.md)", cmd_cache)
    actions = c.add_subparsers(dest="cache_command", required=True, metavar="ACTION", parser_class=_Parser)
    for name, text in (
        ("stats", "entries, bytes and the credits the cache has saved"),
        ("prune", "remove entries not used for a while"),
    ):
        a = actions.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        a.add_argument(
            "--cache",
            metavar="URL",
            default=os.environ.get("VANCE_CACHE"),
            help="the cache's fsspec URL, e.g. s3://bucket/vance-cache/ (or VANCE_CACHE)",
        )
        if name == "prune":
            a.add_argument(
                "--older-than", required=True, type=_age, metavar="AGE", help="90d, 12h, 30m, 2w, 1d12h"
            )
            a.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    b = command("budget", "account-wide credit budgets, shared by every worker (docs/account.md)", cmd_budget)
    b_actions = b.add_subparsers(dest="budget_command", required=True, metavar="ACTION", parser_class=_Parser)
    for name, text in (
        ("set", "create or change a budget: CREDITS per --period"),
        ("show", "every budget: credits, spent, reserved by jobs in flight, left"),
    ):
        a = b_actions.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        if name == "set":
            a.add_argument("name", help="the budget's name, e.g. photos")
            a.add_argument("credits", type=_credits, help="credits per period")
            a.add_argument(
                "--period",
                choices=("day", "month", "total"),
                default="total",
                help="day and month are UTC; a new one starts with nothing spent",
            )
        a.add_argument(
            "--store",
            metavar="URL",
            default=os.environ.get("VANCE_ACCOUNT_STORE"),
            help="the account store: local (this machine), sqlite:///path, redis://host:6379/0, "
            "postgresql://user:pass@host/db (or VANCE_ACCOUNT_STORE; default local)",
        )
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "enhance" and len(args.source) == 1:
        args.source = args.source[0]
    args.base_url = None
    ui = Ui()
    library, handler = logging.getLogger("vance_provider"), _Warnings(ui)
    library.addHandler(handler)
    propagate, library.propagate = library.propagate, False
    try:
        code = args.func(args, ui)
    except (VanceError, CliError) as exc:
        code = ui.error(exc, args.base_url)
    except KeyboardInterrupt:
        ui.err.print("interrupted")
        code = EXIT_INTERRUPTED
    finally:
        library.removeHandler(handler)
        library.propagate = propagate
    sys.exit(code)


__all__ = ["EXIT_CODES", "main"]
