"""The ``vance`` command: a real process against the simulator, and a table of mistakes, each with
its documented exit code and the exact first line it prints (in the command's own words)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import as_from_a_terminal, fast_config, image_bytes
from tests.core.conftest import TOKENS, image_size
from tests.core.helpers import created_jobs, release_held_jobs
from vance_provider import cli
from vance_provider.core import BatchSpec, RetryPolicy, VanceClient
from vance_provider.core import client as client_module
from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.sim import Account, SimulatorServer
from vance_provider.sim.cli import banner
from vance_provider.sim.cli import build_parser as sim_parser

VANCE = str(Path(sys.executable).parent / "vance")


def env_for(sim: SimulatorServer | None, token: str | None, columns: bool = True) -> dict[str, str]:
    # Each ``vance`` process imports pandas & co.: it reads their bytecode from the virtualenv (`make
    # env` compiles it) and keeps the project's own in __pycache__, even where PYTHONDONTWRITEBYTECODE
    # is set (a cache folder of its own, PYTHONPYCACHEPREFIX, would compile all of them again per run).
    drop = ("PYTHONDONTWRITEBYTECODE", "COLUMNS")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VANCE_") and k not in drop}
    env.update(NO_COLOR="1")
    if columns:
        env["COLUMNS"] = "200"
    if token is not None:
        env["VANCE_API_TOKEN"] = token
    if sim is not None:
        env["VANCE_BASE_URL"] = sim.base_url
    return env


def start(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [VANCE, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[int, str, str]:
    return finish(start(args, env, cwd))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- end to end, as a real process ----------------------------------------------------------------------
@pytest.mark.slow
def test_enhance_then_credits_status_and_report(
    api: str, sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    token = TOKENS[api]
    env = env_for(sim, token, columns=False)  # no terminal, no COLUMNS: lines must not wrap at 80
    make_image("in/a.jpg", 20, 10)
    make_image("in/sub/b.png", 16, 16)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "a-rather-long-folder-name-for-the-outputs-of-this-batch" / "out"
    code, stdout, stderr = run(
        ["enhance", str(tmp_path / "in"), str(out), "--tool", "upscale", "--scale", "2"], env
    )
    assert code == cli.EXIT_FAILED_ITEMS, stderr  # one input failed: the exit code says so ...
    assert f"failed: {tmp_path / 'in' / 'broken.jpg'}: " in stderr
    assert f"manifest: {out / MANIFEST_NAME}\n" in stderr  # one line, however long
    outputs = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith("_")
    )
    assert [o.rsplit(".", 1)[0] for o in outputs] == ["a", "sub/b"]  # ... and the others were done
    assert image_size(out / outputs[0]) == (40, 20) and image_size(out / outputs[1]) == (32, 32)
    assert "done" in stdout and "2" in stdout
    assert len(created_jobs(sim)) == 2

    report = tmp_path / "usage.csv"
    procs = {
        "credits": start(["credits"], env),
        "report": start(["report", "--out", str(report), "--manifest", str(out.parent / "out")], env),
        "status": start(["status", "--manifest", str(out)], env),
    }
    results = {name: finish(p) for name, p in procs.items()}
    code, c_out, c_err = results["credits"]
    assert code == 0, c_err
    assert f"available 998  used 2  frozen 0  ({api} API)" in c_out
    code, r_out, r_err = results["report"]
    assert code == 0, r_err
    assert f"2 charge(s), 2 credits, written to {report}\n" in r_out
    summary_rows = [line.split() for line in r_out.splitlines() if line.startswith("│")]
    assert [r[1:4:2] for r in summary_rows] == [[api, "upscale"], [api, "all"], ["all", "all"]]
    code, s_out, s_err = results["status"]
    assert code == 0, s_err
    jobs = [i["job_id"] for i in json.loads((out / MANIFEST_NAME).read_text())["items"] if i["job_id"]]
    job_lines = [line for line in s_out.splitlines() if "succeeded" in line]
    assert len(jobs) == 2 and [[j for j in jobs if j in line] for line in job_lines] == [[j] for j in jobs]

    df = pd.read_csv(report)
    charged = sum(e.amount for e in sim.state.charges())
    assert df["credits"].sum() == charged == 2.0
    assert sorted(df["source"]) == [str(tmp_path / "in" / "a.jpg"), str(tmp_path / "in" / "sub" / "b.png")]
    assert set(df["tool"]) == {"upscale"} and df["job_id"].notna().all()
    for text in (stdout, stderr, *(t for r in results.values() for t in r[1:]), report.read_text()):
        assert token not in text


@pytest.mark.slow
def test_usage_error_is_a_line_not_a_traceback(sim: SimulatorServer, tmp_path: Path) -> None:
    procs = {
        "json": start(
            ["enhance", "in", "out", "--tool", "upscale", "--config", "{scale: 2}"], env_for(sim, None)
        ),
        "token": start(["credits"], env_for(sim, None)),
    }
    for name, proc in procs.items():
        code, stdout, stderr = finish(proc)
        assert code == cli.EXIT_USAGE, (name, stderr)
        assert stderr.startswith("error: ") and "Traceback" not in stderr, stderr
        assert stdout == ""


@pytest.mark.slow
def test_ctrl_c_says_what_is_safe_and_the_rerun_resumes(
    sim_factory: Callable[..., SimulatorServer], tmp_path: Path
) -> None:
    sim = sim_factory(time_per_job=60.0)  # the jobs stay in flight until the test moves the clock
    for i in range(5):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"p{i}.jpg").write_bytes(image_bytes(16, 12))
    env = env_for(sim, TOKENS["open"])
    args = ["enhance", "in", "out", "--tool", "upscale", "--max-concurrency", "2", "--poll-interval", "0.05"]
    proc = start(args, env, cwd=tmp_path)
    manifest = tmp_path / "out" / MANIFEST_NAME
    while True:  # until two jobs are recorded in the manifest (no clock involved)
        assert proc.poll() is None, finish(proc)
        try:
            items = json.loads(manifest.read_text())["items"]
        except (OSError, ValueError):
            items = []
        if sum(1 for i in items if i["state"] == "submitted") == 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    code, stdout, stderr = finish(proc)
    assert code == cli.EXIT_INTERRUPTED
    assert stderr.splitlines() == [
        "interrupted: 0 of 5 item(s) stored, 2 job(s) in flight kept in out/_vance_manifest.json; "
        "run the same command again to resume (nothing is paid twice)"
    ]
    assert stdout == ""

    release_held_jobs(sim, 60.0)  # those in flight finish now; new jobs are quick
    code, stdout, stderr = run(args, env, cwd=tmp_path)
    assert code == 0, stderr
    assert len(created_jobs(sim)) == 5 and sim.state.double_charges() == []
    assert sum(e.amount for e in sim.state.charges()) == 5.0


# --- the table of mistakes ------------------------------------------------------------------------------
@dataclass
class Mistake:
    """``args`` and the expected first line may use ``{tmp}`` and ``{port}``; a first line ending in
    ``...`` is a prefix. ``token``: an API of ``TOKENS``, a literal token, or None (unset)."""

    args: list[str]
    code: int
    first: str
    token: str | None = "open"
    base_url: str = "sim"  # or "poor" (a simulator account with 1 credit), "dead", or a literal
    hint: str | None = None  # the second line, when the words of the hint matter
    setup: Callable[[Path, dict[str, Any]], None] | None = None
    stdout: str | None = None  # a text the standard output must hold


def _images(tmp: Path, _: dict[str, Any]) -> None:
    for i in range(2):
        (tmp / "in").mkdir(exist_ok=True)
        (tmp / "in" / f"p{i}.jpg").write_bytes(image_bytes(16, 12))


def _upscaled(tmp: Path, ctx: dict[str, Any]) -> None:
    _images(tmp, ctx)
    with VanceClient(TOKENS["open"], base_url=ctx["sim"].base_url) as client:
        result = client.run_batch(BatchSpec(str(tmp / "in"), str(tmp / "out"), "upscale", poll_interval=0.05))
        ctx["job_id"] = result.items[0].job_id


def _garbled(tmp: Path, ctx: dict[str, Any]) -> None:
    _images(tmp, ctx)
    (tmp / "out").mkdir()
    (tmp / "out" / MANIFEST_NAME).write_text("{not json")


def _locked(tmp: Path, ctx: dict[str, Any]) -> None:
    from vance_provider.core.state.lease import BatchLease

    _images(tmp, ctx)
    lease = BatchLease(str(tmp / "out" / MANIFEST_NAME), owner="another-terminal")
    lease.acquire()
    ctx["cleanup"].append(lease.release)


MISTAKES: dict[str, Mistake] = {
    "config-not-json": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale", "--config", "{scale: 2}"],
        cli.EXIT_USAGE,
        "error: --config is not valid JSON: Expecting property name enclosed in double quotes (line 1, column 2)",
        hint="""hint: write a JSON object, keys in double quotes: --config '{"scale": 2}'""",
    ),
    "config-not-an-object": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale", "--config", "[2]"],
        cli.EXIT_USAGE,
        "error: --config must be a JSON object, got a JSON list",
    ),
    "no-tool": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out"],
        cli.EXIT_USAGE,
        "error: the following arguments are required: --tool",
        hint="hint: see `vance enhance --help`",
    ),
    "unknown-command": Mistake(
        ["upscale", "photos/"],
        cli.EXIT_USAGE,
        "error: argument COMMAND: invalid choice: 'upscale' (choose from 'enhance', 'status', 'credits', 'report', 'cache', 'budget')",
    ),
    "negative-budget": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale", "--budget", "-1"],
        cli.EXIT_USAGE,
        "error: argument --budget: '-1': give 0 or more credits",
    ),
    "no-concurrency": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale", "--max-concurrency", "0"],
        cli.EXIT_USAGE,
        "error: argument --max-concurrency: '0': give a whole number of 1 or more",
    ),
    "negative-wait": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale", "--wait-lock", "-1"],
        cli.EXIT_USAGE,
        "error: argument --wait-lock: '-1': give 0 or more seconds",
    ),
    "report-extension": Mistake(
        ["report", "--out", "{tmp}/usage.txt"],
        cli.EXIT_USAGE,
        "error: argument --out: '{tmp}/usage.txt' must end in .csv or .parquet",
    ),
    "no-token": Mistake(
        ["credits"],
        cli.EXIT_USAGE,
        "error: no API token: VANCE_API_TOKEN is not set",
        token=None,
        hint="hint: export VANCE_API_TOKEN=<your web API v1 token, or Open API v1 key sk_live_...>; "
        "for the local simulator, `vance-sim serve` prints the tokens it accepts",
    ),
    "wrong-token-open": Mistake(
        ["credits"],
        cli.EXIT_USAGE,
        "error: Open API v1 (balance): ...",
        token="sk_live_wrong0123456789abcdef0123456",
        hint="hint: check the key in VANCE_API_TOKEN; revoked keys stay invalid",
    ),
    "web-token-on-open-api": Mistake(
        ["--api", "open", "credits"],
        cli.EXIT_USAGE,
        "error: Open API v1 (balance): ...",
        token="web",
        hint="hint: this token is not an Open API key (those start with sk_live_); a web API token "
        "needs --api web or --api auto",
    ),
    "wrong-token-web": Mistake(
        ["credits"],
        cli.EXIT_USAGE,
        "error: web API v1 (balance): ...",
        token="wrong0123456789abcdef0123456789ab",
        hint="hint: check the token in VANCE_API_TOKEN",
    ),
    "service-unreachable": Mistake(
        ["credits"],
        cli.EXIT_SERVICE,
        "error: Open API v1 (balance): connection failed (ConnectError) at http://127.0.0.1:{port}/api/v1",
        base_url="dead",
        hint="hint: is the service running at that address? Check VANCE_BASE_URL and the network "
        "(for the local simulator: vance-sim serve)",
    ),
    "base-url-not-http": Mistake(
        ["credits"],
        cli.EXIT_USAGE,
        "error: base_url 'ftp://example.com' is not an http(s) URL",
        base_url="ftp://example.com",
    ),
    "unknown-tool": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "warp_drive"],
        cli.EXIT_USAGE,
        "error: tool 'warp_drive' is unknown...",
        setup=_images,
    ),
    "tool-of-the-other-api": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "colorize"],
        cli.EXIT_USAGE,
        "error: tool 'colorize' is not on the Open API v1; it exists on the web API v1 (--api web)...",
        setup=_images,
    ),
    "no-inputs": Mistake(
        ["enhance", "{tmp}/empty", "{tmp}/out", "--tool", "upscale"],
        cli.EXIT_USAGE,
        "error: {tmp}/empty: the source does not exist...",
    ),
    "over-budget": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale", "--budget", "1"],
        cli.EXIT_CREDITS,
        "error: the batch needs about 2 credits for 2 item(s), over its budget of 1",
        hint="hint: raise --budget, shrink the batch, or pass --partial",
        setup=_images,
    ),
    "over-the-balance": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale"],
        cli.EXIT_CREDITS,
        "error: the batch needs about 2 credits for 2 item(s); the balance is 1",
        hint="hint: top up, shrink the batch, or pass --partial",
        base_url="poor",
        setup=_images,
    ),
    "manifest-of-another-batch": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "denoise"],
        cli.EXIT_USAGE,
        "error: the manifest {tmp}/out/_vance_manifest.json belongs to another batch: its tool is "
        "'upscale', this run's is 'denoise'",
        hint="hint: write this batch to another destination; or start afresh with --fresh: the old "
        "manifest is archived and the outputs already there are kept (a new output is never written "
        "over one of them unless --overwrite says so)",
        setup=_upscaled,
    ),
    "manifest-garbled": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale"],
        cli.EXIT_USAGE,
        "error: the manifest {tmp}/out/_vance_manifest.json cannot be read: it is not valid JSON...",
        setup=_garbled,
    ),
    "batch-locked": Mistake(
        ["enhance", "{tmp}/in", "{tmp}/out", "--tool", "upscale"],
        cli.EXIT_LOCKED,
        "error: the batch of {tmp}/out/_vance_manifest.json is being run by another-terminal...",
        setup=_locked,
    ),
    "status-of-a-missing-job": Mistake(
        ["status", "{job_id}", "job_nope"],
        cli.EXIT_USAGE,
        "error: job job_nope: Open API v1 (job status): ...",
        setup=_upscaled,
        stdout="succeeded",
    ),
    "report-without-a-manifest": Mistake(
        ["report", "--out", "{tmp}/u.csv", "--manifest", "{tmp}/nowhere"],
        cli.EXIT_USAGE,
        "error: --manifest {tmp}/nowhere: no _vance_manifest.json in this folder",
    ),
}


@pytest.fixture
def ctx(sim: SimulatorServer, sim_factory: Callable[..., SimulatorServer]) -> Iterator[dict[str, Any]]:
    context: dict[str, Any] = {"sim": sim, "sim_factory": sim_factory, "cleanup": []}
    yield context
    for undo in context["cleanup"]:
        undo()


@pytest.mark.parametrize("name", list(MISTAKES))
def test_mistakes(
    name: str,
    ctx: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    m = MISTAKES[name]
    if m.setup:
        m.setup(tmp_path, ctx)
    port = free_port()
    if m.base_url == "sim":
        base = ctx["sim"].base_url
    elif m.base_url == "poor":
        base = ctx["sim_factory"](accounts=[Account(credits=1.0)]).base_url
    elif m.base_url == "dead":
        base = f"http://127.0.0.1:{port}"
    else:
        base = m.base_url
    for key in [k for k in os.environ if k.startswith("VANCE_")] + ["COLUMNS"]:
        monkeypatch.delenv(key, raising=False)
    # The default retries with tiny delays: a dead service is given up on at once, not in 15 s.
    monkeypatch.setattr(client_module, "RetryPolicy", lambda: RetryPolicy(initial=0.01, max_delay=0.05))
    if m.token is not None:
        monkeypatch.setenv("VANCE_API_TOKEN", TOKENS.get(m.token, m.token))
    monkeypatch.setenv("VANCE_BASE_URL", base)
    fill = {"{tmp}": str(tmp_path), "{port}": str(port), "{job_id}": ctx.get("job_id", "")}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    args = [filled(a) for a in m.args]
    before = len(created_jobs(ctx["sim"]))
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert exit_.value.code == m.code, captured.err
    first = filled(m.first)
    if first.endswith("..."):
        assert lines[0].startswith(first[:-3]), lines
    else:
        assert lines[0] == first, lines
    if m.hint is not None:
        assert lines[1] == m.hint, lines
    if m.stdout is not None:
        assert m.stdout in captured.out
    else:
        assert captured.out == ""
    assert "Traceback" not in captured.err
    assert len(created_jobs(ctx["sim"])) == before  # a mistake costs nothing
    for token in TOKENS.values():
        assert token not in captured.err + captured.out


def test_every_exit_code_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    for code in cli.EXIT_CODES:
        assert f"| {code} |" in text, code
    # 129 and 143: SIGHUP and SIGTERM (tests/reliability/test_integrity_round2.py)
    assert set(cli.EXIT_CODES) == {m.code for m in MISTAKES.values()} | {0, 1, 129, 130, 143}


def test_hints_speak_cli() -> None:
    words = cli.cli_words
    assert words("raise credit_budget, shrink the batch, or use on_insufficient_credits='partial'") == (
        "raise --budget, shrink the batch, or pass --partial"
    )
    assert (
        words("wait for it (lock_timeout / --wait-lock); or not")
        == "wait for it (--wait-lock SECONDS); or not"
    )
    assert words("start afresh with fresh=True (--fresh), which archives it") == (
        "start afresh with --fresh, which archives it"
    )
    assert words("create the client with api='visioncraft'") == "create the client with --api visioncraft"
    assert words("web API point: invalid API token (code 30001)") == (
        "web API v1 (balance): invalid API token (code 30001)"
    )
    assert words("open API credits: connection failed") == "Open API v1 (balance): connection failed"
    assert words("web API tools: denoise, enlarge3") == "web API tools: denoise, enlarge3"


# --- the simulator's command ----------------------------------------------------------------------------
def test_simulator_banner_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    args = sim_parser().parse_args(["serve", "--port", "0"])
    with SimulatorServer(fast_config(), port=0) as server:
        text = banner(server, args)
    lines = text.splitlines()
    assert lines[0] == f"VanceAI simulator on {server.base_url}  (1000 credits; Ctrl-C stops it)"
    assert f"{server.open_url}      key:   {TOKENS['open']}" in text
    assert f"{server.web_url}  token: {TOKENS['web']}" in text
    assert f"export VANCE_BASE_URL={server.base_url}" in text
    assert f"export VANCE_API_TOKEN={TOKENS['open']}" in text
    # tokens the user chose are theirs: not printed
    mine = sim_parser().parse_args(["serve", "--open-key", "sk_live_mine0123456789", "--web-token", "mine"])
    with SimulatorServer(fast_config(), port=0) as server:
        text = banner(server, mine)
    assert "sk_live_mine0123456789" not in text and "token: mine" not in text
    with pytest.raises(SystemExit):
        sim_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default: 8765)",
        "(default: 127.0.0.1)",
        "(default: 1000.0)",
        f"(default: {TOKENS['open']})",
    ):
        assert default in help_text, default
    assert "(default: False)" not in help_text and "(default: None)" not in help_text


@pytest.mark.slow
def test_cache_flag_and_commands(
    sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """`--cache` pays once for the same pixels; `vance cache stats|prune` read and tidy the cache."""
    for i in range(3):
        make_image(f"a/p{i}.jpg", 16 + i, 12)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    env = {**env_for(sim, TOKENS["web"]), "VANCE_CACHE": str(tmp_path / "cache")}
    enhance = ["enhance", "--tool", "upscale", "--scale", "2"]
    assert run([*enhance, "a", "out1"], env, tmp_path)[0] == 0
    code, out, err = run([*enhance, "b", "out2"], env, tmp_path)
    assert code == 0 and "from the cache: 3 item(s), 3 credits saved" in err
    assert sum(e.amount for e in sim.state.charges()) == 3
    # The report's last line counts as its table does: 3 charges, and the 3 cache hits apart.
    code, out, err = run(
        ["report", "--out", "usage.csv", "--manifest", "out1", "--manifest", "out2"], env, tmp_path
    )
    assert code == 0, err
    assert "3 charge(s), 3 credits, 3 cache hit(s) (3 credits saved), written to usage.csv" in out
    code, out, _ = run(["cache", "stats"], env, tmp_path)
    assert code == 0 and out.startswith("3 entries, ") and out.strip().endswith("3 hits saved 3 credits")
    code, out, _ = run(["cache", "prune", "--older-than", "90d"], env, tmp_path)
    assert code == 0 and out.startswith("removed 0 entries")
    code, _, err = run(["cache", "prune", "--older-than", "soon"], env, tmp_path)
    assert code == 2 and err.startswith("error: argument --older-than: 'soon' is not an age")
    env.pop("VANCE_CACHE")
    code, _, err = run(["cache", "stats"], env, tmp_path)
    assert code == 2 and err.splitlines()[:2] == [
        "error: no cache given",
        "hint: pass --cache URL or set VANCE_CACHE",
    ]


@pytest.mark.slow
def test_a_rerun_says_what_was_kept_and_a_png_says_its_format(sim: SimulatorServer, tmp_path: Path) -> None:
    """The summary's words: a PNG stored as JPEG is said so; a rerun counts the inputs an earlier
    run finished under done (kept, not paid again), and skipped stays for inputs left undone."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(image_bytes(16, 12))
    Image.new("RGB", (16, 12), (10, 200, 30)).save(tmp_path / "in" / "b.png")
    env = env_for(sim, TOKENS["open"])
    args = ["enhance", "in", "out", "--tool", "upscale", "--scale", "2"]
    code, _, stderr = run(args, env, cwd=tmp_path)
    assert code == 0, stderr
    assert "format: 1 png input(s) stored as jpg, the API's default; --output-format chooses" in stderr
    assert "already done" not in stderr
    code, _, stderr = run(args, env, cwd=tmp_path)
    assert code == 0, stderr
    assert "already done in an earlier run: 2 item(s), kept (counted as done, not paid again)" in stderr
    assert len(created_jobs(sim)) == 2
    code, _, stderr = run(
        ["enhance", "in", "out_png", "--tool", "upscale", "--output-format", "png"], env, tmp_path
    )
    assert code == 0 and "format:" not in stderr, stderr
    assert sorted(p.name for p in (tmp_path / "out_png").glob("*.png")) == ["a.png", "b.png"]
