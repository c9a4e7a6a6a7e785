"""The ``vance`` command, run as a real process against the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.core.conftest import TOKENS, image_size
from tests.core.helpers import created_jobs
from vance_provider.core.manifest import MANIFEST_NAME
from vance_provider.sim import SimulatorServer

VANCE = str(Path(sys.executable).parent / "vance")
_PYCACHE: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each ``vance`` process imports pandas & co.; with bytecode caching off (PYTHONDONTWRITEBYTECODE)
    that costs seconds per run. Cache the bytecode in a temporary folder, not in the virtualenv."""
    _PYCACHE[:] = [str(tmp_path_factory.mktemp("pycache"))]


def env_for(sim: SimulatorServer | None, token: str | None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("VANCE_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(COLUMNS="200", NO_COLOR="1", PYTHONPYCACHEPREFIX=_PYCACHE[0])
    if token is not None:
        env["VANCE_API_TOKEN"] = token
    if sim is not None:
        env["VANCE_BASE_URL"] = sim.base_url
    return env


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [VANCE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    return finish(start(args, env))


def test_enhance_then_credits_and_report(
    api: str, sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path
) -> None:
    token = TOKENS[api]
    env = env_for(sim, token)
    make_image("in/a.jpg", 20, 10)
    make_image("in/sub/b.png", 16, 16)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    code, stdout, stderr = run(
        ["enhance", str(tmp_path / "in"), str(out), "--tool", "upscale", "--scale", "2"], env
    )
    assert code == 1, stderr  # one input failed: the exit code says so ...
    assert "broken.jpg" in stderr and "failed" in stderr
    assert f"manifest: {out / MANIFEST_NAME}" in stderr.replace("\n", "")
    outputs = sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    )
    assert [o.rsplit(".", 1)[0] for o in outputs] == ["a", "sub/b"]  # ... and the others were done
    assert image_size(out / outputs[0]) == (40, 20) and image_size(out / outputs[1]) == (32, 32)
    assert "done" in stdout and "2" in stdout
    assert len(created_jobs(sim)) == 2

    report = tmp_path / "usage.csv"
    report_args = ["report", "--out", str(report)] + (
        ["--manifest", str(out / MANIFEST_NAME)] if api == "open" else []
    )
    credits_proc, report_proc = start(["credits"], env), start(report_args, env)
    (c_code, c_out, c_err), (r_code, r_out, r_err) = finish(credits_proc), finish(report_proc)
    assert c_code == 0, c_err
    assert f"available 998  used 2  frozen 0  ({api} API)" in c_out
    assert r_code == 0, r_err
    assert "credits, written to" in r_out and str(report) in r_out.replace("\n", "")
    df = pd.read_csv(report)
    charged = sum(e.amount for e in sim.state.charges())
    assert df["credits"].sum() == charged == 2.0
    for text in (
        stdout,
        stderr,
        c_out,
        c_err,
        r_out,
        r_err,
        report.read_text(),
        (out / MANIFEST_NAME).read_text(),
    ):
        assert token not in text


def test_usage_errors(sim: SimulatorServer, make_image: Callable[..., Path], tmp_path: Path) -> None:
    make_image("in/a.jpg", 16, 16)
    procs = {
        "no-token": start(["credits"], env_for(sim, None)),
        "bad-tool": start(
            ["enhance", str(tmp_path / "in"), str(tmp_path / "out"), "--tool", "warp_drive"],
            env_for(sim, TOKENS["web"]),
        ),
        "wrong-token": start(["credits"], env_for(sim, "sk_live_wrong0123456789abcdef0123456")),
    }
    results = {name: finish(p) for name, p in procs.items()}
    code, _, stderr = results["no-token"]
    assert code != 0 and "set VANCE_API_TOKEN" in stderr and "Traceback" not in stderr
    code, _, stderr = results["bad-tool"]
    assert code == 2 and "error:" in stderr and "warp_drive" in stderr and "Traceback" not in stderr
    code, _, stderr = results["wrong-token"]
    assert code == 2 and "error:" in stderr and "sk_live_wrong0123456789abcdef0123456" not in stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert created_jobs(sim) == []
