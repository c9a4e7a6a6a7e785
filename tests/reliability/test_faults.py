"""A batch under injected faults on every endpoint: nothing lost, nothing corrupt, nothing paid twice.

CI runs a small size; ``make soak`` (VANCE_SOAK=1) runs 1000+ jobs per API and writes the
counts to bench/results/soak.json. The same holds for a tight per-key rate limit: CI runs a few
jobs in scaled time, the soak 300 jobs at 2 requests/s and 60 jobs at 60 a minute, in real time.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN
from tests.reliability.test_rate_limits import check, run_tight
from vance_provider.core import BatchSpec, RetryPolicy, VanceClient
from vance_provider.sim import Faults, SimConfig, SimulatorServer

SOAK = os.environ.get("VANCE_SOAK") == "1"
N = int(os.environ.get("VANCE_SOAK_N", "1000")) if SOAK else 60
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "soak.json"


def _inputs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:05d}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.new("RGB", (24 + i % 5, 16 + i % 3), (i % 256, 80, 160)).save(p)
        paths.append(p)
    return paths


def _verify(dest: Path, result: Any, inputs: list[Path]) -> dict[str, int]:
    """Every input is done with a complete, decodable output of the right size, or failed with a reason."""
    by_source = {Path(i.source).name: i for i in result.items}
    assert set(by_source) == {p.name for p in inputs}
    verified = 0
    for p in inputs:
        item = by_source[p.name]
        if item.state == "done":
            with Image.open(p) as src, Image.open(item.output) as out:
                out.load()  # raises on a truncated file
                assert out.size == (src.width * 2, src.height * 2)
            verified += 1
        else:
            assert item.state in ("failed", "skipped") and item.error, item
    leftovers = [f for f in dest.rglob("*") if ".partial" in f.name]
    assert leftovers == [], "a partial download is visible"
    return {"verified": verified, "failed": sum(1 for i in result.items if i.state != "done")}


@pytest.mark.parametrize("api", ["open", "web"])
def test_batch_under_twenty_percent_faults(api: str, tmp_path: Path) -> None:
    faults = Faults.uniform(0.20, seed=11, slow_seconds=1.5)
    config = SimConfig(
        queue_delay=0.01, time_per_job=0.05, tick=0.01, max_concurrent_images=32, faults=faults
    )
    config.accounts[0].credits = 10 * N
    inputs = _inputs(tmp_path / "in", N)
    dest = tmp_path / "out"
    stats: dict[str, Any] = {"api": api, "jobs": N}
    with SimulatorServer(config) as sim:
        token = OPEN_KEY if api == "open" else WEB_TOKEN
        # A short client timeout, so the 'slow' faults really time out on the client.
        with VanceClient(
            token,
            base_url=sim.base_url,
            timeout=1.0,
            retry=RetryPolicy(max_attempts=8, initial=0.05, max_delay=1.0),
        ) as client:
            spec = BatchSpec(
                str(tmp_path / "in"),
                str(dest),
                "upscale",
                {"scale": 2},
                max_concurrency=24,
                poll_interval=0.05,
                max_poll_interval=0.5,
                on_failure="continue",
            )
            first = client.run_batch(spec)
            stats["first_run"] = _verify(dest, first, inputs)
            # A rerun finishes what failed (service-side failures are refunded) and pays nothing twice.
            second = client.run_batch(spec)
            stats["rerun"] = _verify(dest, second, inputs)
        assert second.done + second.failed == N
        assert second.done >= N * 0.95
        assert sim.state.double_charges() == []
        charged = Counter(e.job_id for e in sim.state.charges())
        assert all(n == 1 for n in charged.values())
        assert len(charged) == second.done  # exactly one charge per stored output
        if api == "open":
            per_key = Counter(j.idempotency_key for j in sim.state.jobs.values())
            assert max(per_key.values()) == 1, "two jobs for one idempotency key"
        stats["faults_injected"] = dict(sim.state.faults_injected)
        stats["requests"] = len(sim.state.requests)
        stats["double_charges"] = len(sim.state.double_charges())
        assert sum(sim.state.faults_injected.values()) > N * 0.2  # the faults really happened
    if SOAK:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data[api] = stats
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(stats))


#: name -> (requests per window, window in seconds, jobs, concurrency, first poll interval)
TIGHT = (
    {"2_per_s": (2, 1.0, 300, 16, 0.5), "60_per_min": (60, 60.0, 60, 8, 2.0)}
    if SOAK
    else {"2_per_s_scaled": (2, 0.05, 30, 16, 0.05)}  # 20 times faster: a few seconds
)


@pytest.mark.timeout(3600 if SOAK else 300)
@pytest.mark.parametrize("api", ["open", "web"])
def test_batch_under_a_tight_rate_limit(api: str, tmp_path: Path) -> None:
    """No item fails because of a 429 and none is paid twice; the soak records 429s per job."""
    runs = {}
    for case, (limit, window, jobs, concurrency, poll) in TIGHT.items():
        stats = run_tight(
            api,
            tmp_path / case,
            limit=limit,
            window=window,
            jobs=jobs,
            concurrency=concurrency,
            poll_interval=poll,
        )
        print(json.dumps(stats))
        check(stats, window=window)
        runs[f"{api}_{case}"] = stats
    if SOAK:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        data.setdefault("tight_rate_limit", {}).update(runs)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
