"""Kill the process running a batch (a real SIGKILL) at several points, rerun, and check that the
batch completes, nothing is paid twice and the manifest is never corrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.sim import SimConfig, SimulatorServer

pytestmark = pytest.mark.slow  # starts processes of its own

N = 12
SCRIPT = """
import os, sys
from vance_provider.core import BatchSpec, VanceClient
with VanceClient(os.environ["T"], base_url=os.environ["U"]) as c:
    c.run_batch(BatchSpec(sys.argv[1], sys.argv[2], "upscale", {"scale": 2}, max_concurrency=4,
                          poll_interval=0.1, on_failure="continue"))
"""
UPLOADS = ("/web_api/v1/upload", "/api/v1/jobs")
DOWNLOADS = ("/web_api/v1/download", "/storage/results/")


def _requests(sim: SimulatorServer, paths: tuple[str, ...], answered: bool | None = None) -> int:
    """Requests to ``paths`` seen so far (``answered=False``: still in progress)."""
    with sim.state.lock:
        hits = [r for r in sim.state.requests if r.path.startswith(paths) and r.method in ("POST", "GET")]
    return sum(1 for r in hits if answered is None or (r.status != 0) == answered)


KILL_POINTS: dict[str, Callable[[SimulatorServer], bool]] = {
    "mid-upload": lambda sim: _requests(sim, UPLOADS, answered=False) > 0,
    "jobs-in-flight": lambda sim: len(sim.state.jobs) >= N // 2,
    "mid-download": lambda sim: _requests(sim, DOWNLOADS) > 0,
}


def _inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(N):
        # Big enough that an upload takes a moment; noise does not compress.
        Image.effect_noise((400, 300), 60 + i).convert("RGB").save(folder / f"img{i:02d}.png")


def _start(sim: SimulatorServer, token: str, src: Path, dest: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "T": token, "U": sim.base_url}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(src), str(dest)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _kill_when(proc: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, "the batch finished before the kill point"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def _check_manifest(dest: Path) -> None:
    manifest = dest / "_vance_manifest.json"
    if manifest.exists():
        json.loads(manifest.read_text())  # never half-written


def _finish_and_verify(sim: SimulatorServer, token: str, src: Path, dest: Path) -> None:
    with VanceClient(token, base_url=sim.base_url) as client:
        result = client.run_batch(BatchSpec(str(src), str(dest), "upscale", {"scale": 2}, poll_interval=0.05))
    assert result.done == N, result.summary()
    for item in result.items:
        with Image.open(item.output) as out:
            out.load()
            assert out.size == (800, 600)
    assert sim.state.double_charges() == []
    charged_sources = Counter(sim.state.jobs[e.job_id].source_sha256 for e in sim.state.charges())
    assert len(charged_sources) == N and set(charged_sources.values()) == {1}, "an input was paid twice"
    visible = [p for p in dest.iterdir() if not p.name.startswith((".", "_"))]
    assert len(visible) == N


@pytest.mark.parametrize("api", ["open", "web"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_and_resume(api: str, point: str, tmp_path: Path) -> None:
    src, dest = tmp_path / "in", tmp_path / "out"
    _inputs(src)
    token = OPEN_KEY if api == "open" else WEB_TOKEN
    with SimulatorServer(SimConfig(queue_delay=0.05, time_per_job=0.4, tick=0.01)) as sim:
        proc = _start(sim, token, src, dest)
        _kill_when(proc, lambda: KILL_POINTS[point](sim))
        _check_manifest(dest)
        _finish_and_verify(sim, token, src, dest)


def test_repeated_kills_never_corrupt_the_manifest(tmp_path: Path) -> None:
    """Kill at many moments (some land while the manifest is being written); it always parses."""
    src, dest = tmp_path / "in", tmp_path / "out"
    _inputs(src)
    with SimulatorServer(SimConfig(queue_delay=0.05, time_per_job=0.3, tick=0.01)) as sim:
        for delay in (0.4, 0.7, 0.9, 1.1, 1.3, 1.6):
            proc = _start(sim, OPEN_KEY, src, dest)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            _check_manifest(dest)
        _finish_and_verify(sim, OPEN_KEY, src, dest)
