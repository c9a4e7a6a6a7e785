"""bench.speed's floor client, the minimal client the engines are measured against: a create
refused with a 429 is sent again (same Idempotency-Key), anything else unexpected stops the run
saying what the service answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench import speed
from bench.run import make_images
from tests.conftest import fast_config
from vance_provider.sim import SimulatorServer
from vance_provider.sim.config import Faults


def _run_floor(server: SimulatorServer, src: Path) -> dict[str, object]:
    return asyncio.run(speed.floor("open", server.base_url, src, 1, 0.05, 1, 100))


def test_a_create_refused_with_a_429_is_sent_again_with_the_same_key(tmp_path: Path) -> None:
    make_images(tmp_path, 1)
    # One job, so the requests go one after another: with this seed the simulator's first draw
    # (the create) is a 429 rate_limited and its second (the create sent again) is not.
    with SimulatorServer(fast_config(faults=Faults(rate_limit=0.5, seed=1))) as server:
        _run_floor(server, tmp_path)
        creates = [r for r in server.state.requests if r.path == "/api/v1/jobs"]
    assert [r.status for r in creates] == [429, 202]
    assert creates[0].idempotency_key and creates[0].idempotency_key == creates[1].idempotency_key
    assert creates[1].created_job


def test_an_unexpected_answer_stops_the_run_with_its_status_and_body(tmp_path: Path) -> None:
    make_images(tmp_path, 1)
    with SimulatorServer(fast_config(faults=Faults(error=1.0))) as server:  # every answer a 500 or 503
        with pytest.raises(
            RuntimeError, match=r"POST /api/v1/jobs answered 50[03]: .*(internal_error|service_unavailable)"
        ):
            _run_floor(server, tmp_path)
