"""No job is looked at more often than the vendor's polling guidance (``poll_interval``)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from tests.conftest import fast_config
from tests.core.helpers import photo_inputs
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.sim import DEMO_OPEN_KEY, SimulatorServer


def test_looks_at_a_job_are_at_least_poll_interval_apart(tmp_path: Path) -> None:
    floor = 0.2
    sim = SimulatorServer(fast_config(time_per_job=1.0, queue_delay=0.0)).start()
    try:
        src, dst = photo_inputs(tmp_path, 6)
        with VanceClient(DEMO_OPEN_KEY, api="open", base_url=sim.base_url) as client:
            result = client.run_batch(
                BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, poll_interval=floor)
            )
        assert result.done == 6
        looks = Counter(
            r.job for r in sim.state.requests if r.method == "GET" and r.path == f"/api/v1/jobs/{r.job}"
        )
        for job_id, count in looks.items():
            job = sim.state.jobs[job_id]
            assert job.finished_at is not None
            # Looks while it ran, at most one per floor, plus the one that found it done (and one
            # more for a clock's grain): a poll every 0.04 s would make about 25.
            allowed = math.ceil((job.finished_at - job.created_at) / floor) + 2
            assert count <= allowed, (job_id, count, allowed)
    finally:
        sim.stop()
