"""Kill the process (a real SIGKILL) while a batch is still checking its inputs and its first jobs
already run, rerun it, and check that every input is paid for once and the rerun is not refused.

The inputs are checked as they stream into jobs: at the kill, some jobs exist (some downloaded)
whose ids may not be written down yet, and most inputs are not checked. The rerun must find those
jobs again by their keys (not pay again) and recognise the outputs already written as its own."""

from __future__ import annotations

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

N = 60
# Each input's check is slowed (30 ms) and noted in a file: the kill lands mid-planning.
SCRIPT = """
import os, sys, time
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.core.batch import planning
real, log = planning.check_input, open(sys.argv[3], "a", buffering=1)
def slow(url, *args, **kwargs):
    time.sleep(0.03)
    log.write(url + "\\n")
    return real(url, *args, **kwargs)
planning.check_input = slow
with VanceClient(os.environ["T"], base_url=os.environ["U"]) as c:
    c.run_batch(BatchSpec(sys.argv[1], sys.argv[2], "upscale", {"scale": 2}, max_concurrency=4,
                          poll_interval=0.05))
"""
DOWNLOADS = ("/web_api/v1/download", "/storage/results/")


def _downloads(sim: SimulatorServer) -> int:
    with sim.state.lock:
        return sum(1 for r in sim.state.requests if r.path.startswith(DOWNLOADS) and r.status == 200)


KILL_POINTS: dict[str, Callable[[SimulatorServer], bool]] = {
    "first-job": lambda sim: len(sim.state.jobs) >= 1,
    "first-downloads": lambda sim: _downloads(sim) >= 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("api", ["open", "web"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_mid_planning_then_rerun_pays_each_input_once(api: str, point: str, tmp_path: Path) -> None:
    src, dest, checked = tmp_path / "in", tmp_path / "out", tmp_path / "checked.txt"
    src.mkdir()
    for i in range(N):
        Image.new("RGB", (24, 18), (i * 4, 255 - i * 4, 90)).save(src / f"img{i:03d}.png")
    token = OPEN_KEY if api == "open" else WEB_TOKEN
    with SimulatorServer(SimConfig(queue_delay=0.0, time_per_job=0.05, tick=0.01)) as sim:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(src), str(dest), str(checked)],
            env={**os.environ, "T": token, "U": sim.base_url},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not KILL_POINTS[point](sim):
            assert proc.poll() is None, "the batch ended before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        seen = checked.read_text().splitlines()
        assert 0 < len(seen) < N, "the kill was meant to land while inputs were still being checked"

        with VanceClient(token, base_url=sim.base_url) as client:
            result = client.run_batch(
                BatchSpec(str(src), str(dest), "upscale", {"scale": 2}, poll_interval=0.05)
            )
        assert (result.done, result.failed, result.skipped) == (N, 0, 0), result.summary()
        for item in result.items:
            assert item.output
            with Image.open(item.output) as out:
                assert out.size == (48, 36)
        assert sim.state.double_charges() == []
        paid = Counter(sim.state.jobs[e.job_id].source_sha256 for e in sim.state.charges())
        assert len(paid) == N and set(paid.values()) == {1}, "an input was paid twice"
