"""Tight per-key rate limits: no item lost to a 429, nothing paid twice, few 429s (issue 12).

The simulator sends the ``X-RateLimit-*`` headers only on the 429 (``rate_headers="on_429"``:
all the Open API documents promise), and limits the web API the same way
(``web_rate_limit=True``). Before the client-wide gate, 3 or 4 of 10 items failed at 2
requests/s with ``rate_limited`` and 4-5 requests per job were refused.

Time is scaled through ``rate_window`` so CI stays fast: 2 requests per 0.05 s window has the
shape of 2 requests/s, 20 times faster; 60 per 1.5 s is the documented example of 60 a minute,
40 times faster. The batches are as small as still crosses many windows (100 jobs: ~200 windows
of 2 requests; 60 jobs: 3-4 windows of 60, each spent at once and waited out): the time is the
limit's, requests / rate, so 300 jobs only took three times as long. The simulator gives Reset and Retry-After in milliseconds for such windows.
``make soak`` runs the same in real time (2 requests/s, 60/min) and records the figures in
bench/results/soak.json. No assertion here depends on timing but a loose bound on the 429s.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.sim import SimConfig, SimulatorServer

#: name -> (requests per window, window in seconds, jobs, concurrency). Each limit must bite on a
#: loaded machine too: with 1.5 s windows, 60 jobs' 188 requests under the full suite took 6.2 s,
#: fewer than 60 in every window, and the test asserts that the limit bit.
SCALED = {
    "2_per_s": (2, 0.05, 100, 16),
    "60_per_min": (60, 4.0, 60, 8),
}
CREATE_PATHS = ("/api/v1/jobs", "/web_api/v1/transform")


def run_tight(
    api: str,
    folder: Path,
    *,
    limit: int,
    window: float,
    jobs: int,
    concurrency: int,
    poll_interval: float = 0.05,
) -> dict[str, Any]:
    """Run a batch of ``jobs`` images under the limit; return the counts (every check is the caller's)."""
    source = folder / "in"
    source.mkdir(parents=True)
    for i in range(jobs):
        Image.new("RGB", (24 + i % 5, 16 + i % 3), (i % 256, 80, 160)).save(source / f"img{i:05d}.jpg")
    config = SimConfig(
        queue_delay=0.01,
        time_per_job=0.05,
        tick=0.01,
        rate_limit=limit,
        rate_window=window,
        rate_headers="on_429",
        web_rate_limit=True,
    )
    config.accounts[0].credits = 10 * jobs
    with SimulatorServer(config) as sim:
        started = time.monotonic()
        with VanceClient(OPEN_KEY if api == "open" else WEB_TOKEN, base_url=sim.base_url) as client:
            spec = BatchSpec(
                str(source),
                str(folder / "out"),
                "upscale",
                {"scale": 2},
                max_concurrency=concurrency,
                poll_interval=poll_interval,
                max_poll_interval=10 * poll_interval,
                on_failure="continue",
            )
            result = client.run_batch(spec)
            gate = client.aio.backend.gate
            learned = {"window": round(gate.window, 4), "interval": round(gate.interval, 4)}
        elapsed = time.monotonic() - started
        requests = list(sim.state.requests)
        limited = [r for r in requests if r.status == 429]
        creates = [r for r in requests if r.method == "POST" and r.path in CREATE_PATHS]
        charged = Counter(e.job_id for e in sim.state.charges())
        stats: dict[str, Any] = {
            "api": api,
            "limit": f"{limit} per {window:g} s",
            "headers": "on 429 only",
            "jobs": jobs,
            "concurrency": concurrency,
            "done": result.done,
            "failed": result.failed,
            "failed_by_429": sum(
                1 for i in result.items if i.state != "done" and "rate" in f"{i.error} {i.error_code}".lower()
            ),
            "requests": len(requests),
            "limited_429": len(limited),
            "limited_429_per_job": round(len(limited) / jobs, 3),
            "create_attempts": len(creates),
            "create_attempts_per_job": round(len(creates) / jobs, 3),
            "double_charges": len(sim.state.double_charges()),
            "charged_jobs": len(charged),
            "charges_per_job_max": max(charged.values(), default=0),
            "jobs_per_idempotency_key_max": max(
                Counter(j.idempotency_key for j in sim.state.jobs.values() if j.api == "open").values(),
                default=0,
            ),
            "gate": learned,
            "elapsed_s": round(elapsed, 1),
        }
    return stats


def check(stats: dict[str, Any], *, window: float) -> None:
    """What a tight limit must never cost: an item, or a second charge."""
    assert stats["failed"] == 0 and stats["failed_by_429"] == 0, stats
    assert stats["done"] == stats["jobs"]
    assert stats["double_charges"] == 0 and stats["charges_per_job_max"] == 1
    assert stats["charged_jobs"] == stats["jobs"]  # exactly one charge per stored output
    assert stats["jobs_per_idempotency_key_max"] <= 1  # a refused create made no job
    assert stats["limited_429"] > 0  # the limit really bit
    # How many 429s depends on when requests land in the server's windows: bounded only where a
    # window is long against the machine's jitter (the soak's 1 s and 60 s windows; before the gate
    # it was 4-5 per job): the first burst, sent before anything is known, learning, and jitter.
    if window >= 1.0:
        assert stats["limited_429"] <= 2 * stats["concurrency"] + stats["jobs"] / 3, stats


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SCALED))
@pytest.mark.parametrize("api", ["open", "web"])
def test_tight_rate_limit_loses_nothing(api: str, case: str, tmp_path: Path) -> None:
    limit, window, jobs, concurrency = SCALED[case]
    stats = run_tight(api, tmp_path, limit=limit, window=window, jobs=jobs, concurrency=concurrency)
    print(stats)
    check(stats, window=window)


def test_rate_headers_only_on_the_429(sim_factory: Any) -> None:
    """The simulator option the tests above use: successful answers carry no X-RateLimit-*."""
    import httpx

    server = sim_factory(rate_limit=1, rate_window=60, rate_headers="on_429", web_rate_limit=True)
    with httpx.Client(base_url=server.base_url) as http:
        auth = {"Authorization": f"Bearer {OPEN_KEY}"}
        ok, refused = http.get("/api/v1/credits", headers=auth), http.get("/api/v1/credits", headers=auth)
        web_ok = http.post("/web_api/v1/point", data={"api_token": WEB_TOKEN})
        web_refused = http.post("/web_api/v1/point", data={"api_token": WEB_TOKEN})
    for answer in (ok, web_ok):
        assert answer.status_code == 200
        assert not any(k.lower().startswith("x-ratelimit") for k in answer.headers)
    for answer in (refused, web_refused):
        assert answer.status_code == 429
        assert answer.headers["x-ratelimit-limit"] == "1" and answer.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(answer.headers["retry-after"]) <= 60  # whole seconds: the window is
        assert float(answer.headers["x-ratelimit-reset"]).is_integer()
