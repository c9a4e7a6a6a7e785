"""Small readers of the simulator's request log and ledger, shared by the core tests."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vance_provider.sim import SimulatorServer
from vance_provider.sim.state import RequestRecord

# Every request that sends an input or creates a job.
UPLOAD_PATHS = (
    "/web_api/v1/upload",
    "/web_api/v1/transform",
    "/api/v1/jobs",
    "/api/v1/uploads",
    "/storage/uploads/",
)


def uploads(sim: SimulatorServer) -> list[RequestRecord]:
    """Requests that upload an input or create a job (``/api/v1/jobs/{id}`` polls are not uploads)."""
    return [
        r
        for r in list(sim.state.requests)
        if r.method in ("POST", "PUT") and (r.path in UPLOAD_PATHS or r.path.startswith("/storage/uploads/"))
    ]


def created_jobs(sim: SimulatorServer) -> list[str]:
    """Ids of the jobs created, in order (an idempotent replay creates none)."""
    return [r.created_job for r in list(sim.state.requests) if r.created_job]


def charges(sim: SimulatorServer) -> list[float]:
    """Credits taken from the account: web ``charge`` (on download), Open API ``confirm`` (on success)."""
    return [e.amount for e in sim.state.charges()]


def charged_jobs(sim: SimulatorServer) -> Counter[str]:
    return Counter(e.job_id for e in sim.state.charges())


def count_status(sim: SimulatorServer, status: int, path_prefix: str = "") -> int:
    return sum(1 for r in list(sim.state.requests) if r.status == status and r.path.startswith(path_prefix))


def manifest_job_ids(manifest: Path) -> set[str]:
    """Job ids a batch's manifest on disk holds: what the client has written down (none yet: empty)."""
    try:
        return {i["job_id"] for i in json.loads(manifest.read_text())["items"] if i.get("job_id")}
    except (FileNotFoundError, ValueError, KeyError):
        return set()


def release_held_jobs(sim: SimulatorServer, hold: float, timeout: float = 30.0) -> None:
    """Jobs held by a long ``time_per_job`` (``hold`` seconds of the simulator's clock) finish now,
    and new jobs are quick. The clock jumps once the simulator has started every held job: a job
    still queued would start after the jump, its end ``hold`` seconds later again."""
    deadline = time.monotonic() + timeout
    while any(j.status == "queued" for j in list(sim.state.jobs.values())):
        assert time.monotonic() < deadline, "the simulator did not start the held jobs"
        time.sleep(0.01)
    sim.state.config.time_per_job = 0.05
    sim.state.clock.advance(hold)


def held_clients(token: str, base_url: str) -> Iterator[Callable[[], Any]]:
    """A fixture body: ``make()`` returns a new blocking client (quick retries), each closed at the end."""
    from tests.core.conftest import FAST_RETRY
    from vance_provider.core import VanceClient

    made: list[VanceClient] = []

    def make() -> VanceClient:
        made.append(VanceClient(token, base_url=base_url, retry=FAST_RETRY, timeout=10.0))
        return made[-1]

    yield make
    for client in made:
        client.close()


def photo_inputs(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """``n`` small distinct photos in ``tmp_path/in``; returns (in, out)."""
    from tests.conftest import image_bytes

    (tmp_path / "in").mkdir()
    for i in range(n):
        (tmp_path / "in" / f"p{i}.jpg").write_bytes(image_bytes(16 + i, 12))
    return tmp_path / "in", tmp_path / "out"
