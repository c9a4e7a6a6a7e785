"""Dagster's multiprocess executor, four steps at once, eight shard assets on one account (one
key) of the simulator: every input processed exactly once and paid exactly once (by the bytes
each job was made from), the steps ran in separate processes (at least two), and the account's
cap of jobs in flight was never exceeded, nor a creation refused for it."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from tests.dagster import shard_jobs
from vance_provider.sim import SimulatorServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SHARDS = 8
PER_SHARD = 5
CAP = 16  # the account's jobs in flight: 4 steps x max_concurrency 4


def unique_image(index: int) -> bytes:
    img = Image.new("RGB", (24, 16), (index * 37 % 256, index * 91 % 256, index * 53 % 256))
    img.putpixel((index % 24, index // 24 % 16), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_four_concurrent_steps_on_one_account(
    sim: SimulatorServer,
    instance: dg.DagsterInstance,
    use_token: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_token("open")
    sim.state.config.max_concurrent_images = CAP
    inputs: dict[str, str] = {}
    shards = []
    for s in range(SHARDS):
        src, dst = tmp_path / "in" / f"s{s}", tmp_path / "out" / f"s{s}"
        src.mkdir(parents=True)
        for i in range(PER_SHARD):
            data = unique_image(s * PER_SHARD + i)
            (src / f"s{s}-{i}.jpg").write_bytes(data)
            inputs[hashlib.sha256(data).hexdigest()] = f"s{s}-{i}.jpg"
        shards.append([str(src), str(dst)])
    monkeypatch.setenv("VANCE_TEST_SHARDS", json.dumps(shards))
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    monkeypatch.setenv("VANCE_ACCOUNT_STORE", f"sqlite:///{tmp_path / 'account.sqlite3'}")

    from dagster._core.definitions.reconstruct import ReconstructableJob

    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    with dg.execute_job(dg.reconstructable(shard_jobs.sharded_job), instance=instance) as result:
        assert result.success
        starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
        step_pids = {e.pid for e in starts}
        assert len(starts) == SHARDS

    outputs = sorted(p.name for p in (tmp_path / "out").rglob("*.jpg") if not p.name.startswith("_vance_"))
    assert outputs == sorted(inputs.values())
    assert not sim.state.double_charges()
    paid = Counter(sim.state.jobs[c.job_id].source_sha256 for c in sim.state.charges())
    assert paid == Counter(dict.fromkeys(inputs, 1))

    assert len(step_pids) >= 2, step_pids  # the steps ran in processes of their own

    with sim.state.lock:
        now = sim.state.clock.now()
        intervals = [(j.created_at, j.finished_at or now) for j in sim.state.jobs.values()]
        refused = [
            r
            for r in sim.state.requests
            if r.method == "POST" and r.path == "/api/v1/jobs" and r.status == 429
        ]
    assert max_overlap(intervals) <= CAP
    assert not refused
