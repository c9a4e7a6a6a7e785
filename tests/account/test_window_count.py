"""Workers on one account spend each of the service's rate windows together: what an answer says a
window has left goes at once, for every worker, and never more than the window holds.

Three clients (each with its own rate gate and account, as three workers have) share one SQLite
store and one key, against a simulator that allows 20 requests per 6 s window and says what is
left on every answer. Paced, the account would spread each window's requests through it, and
its pace (5 % under the limit) would let the arrivals' jitter push one over now and then.
Counted by the simulator: every request it answered, in the window it counted it in."""

from __future__ import annotations

import math
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import OPEN_KEY
from vance_provider.core import BatchSpec, VanceClient
from vance_provider.sim import SimConfig, SimulatorServer

pytestmark = pytest.mark.slow

# Windows of 6 s: the account's guard at a window's end is then the 0.6 s of arrival jitter it
# allows for (a tenth of a shorter window), which a loaded machine running the suite can exceed.
LIMIT, WINDOW, WORKERS, JOBS, CONCURRENCY = 20, 6.0, 3, 12, 4


def test_workers_on_one_account_spend_each_window_together_and_never_beyond(tmp_path: Path) -> None:
    config = SimConfig(queue_delay=0.01, time_per_job=0.05, tick=0.01, rate_limit=LIMIT, rate_window=WINDOW)
    config.accounts[0].credits = 10 * WORKERS * JOBS
    store = f"sqlite:///{tmp_path / 'account.sqlite3'}"
    results, errors = [], []

    def worker(n: int, base_url: str) -> None:
        source = tmp_path / f"in{n}"
        source.mkdir()
        for i in range(JOBS):
            Image.new("RGB", (24 + i % 5, 16 + n), (i % 256, 80, 160)).save(source / f"w{n}-{i:03d}.jpg")
        try:
            with VanceClient(OPEN_KEY, base_url=base_url, account_store=store) as client:
                spec = BatchSpec(
                    str(source),
                    str(tmp_path / f"out{n}"),
                    "upscale",
                    {"scale": 2},
                    max_concurrency=CONCURRENCY,
                    poll_interval=0.02,
                    max_poll_interval=0.2,
                )
                results.append(client.run_batch(spec))
        except Exception as exc:  # reported below, with the others'
            errors.append(exc)

    with SimulatorServer(config) as sim:
        threads = [threading.Thread(target=worker, args=(n, sim.base_url)) for n in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        requests = [r for r in sim.state.requests if r.path.startswith("/api/")]

    assert not errors, errors
    assert sum(r.done for r in results) == WORKERS * JOBS
    assert [r.status for r in requests if r.status == 429] == []  # never beyond a window
    per_window = Counter(math.floor(r.at / WINDOW) for r in requests)
    assert max(per_window.values()) <= LIMIT
    # Spent at once, not paced through the window (paced, half would come in each half): in every
    # busy window but the first and the last, three quarters came in its first half.
    early = Counter(math.floor(r.at / WINDOW) for r in requests if r.at % WINDOW < WINDOW / 2)
    busy = [w for w, n in per_window.items() if n >= LIMIT / 2]
    front = [w for w in busy if early[w] >= 0.75 * per_window[w]]
    assert len(busy) >= 4 and len(front) >= len(busy) - 2, sorted((w, per_window[w], early[w]) for w in busy)
