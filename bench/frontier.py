"""What any client can reach at the field profile: requests per job against time, when a job's end
is learnt only by looking at it.

    python -m bench.frontier [--slots 16] [--spread 0.3] [--rate 1.0]

Jobs as ``bench.field`` draws them (2 s queueing + 40 s processing with a log-normal spread), a
rate of ``--rate`` requests a second and ``--slots`` jobs in flight. A client looks at each job
first at some point ``x`` after its creation (the same for every job: they are alike); a job still
running then costs one more look, which (at best) lands exactly at its end. So at ``x``:

    requests per job = 2 + share of jobs longer than x
    seconds per job  = max((mean length + mean lag) / slots, requests per job / rate)

where the lag is ``x - length`` for the jobs done by ``x``. The table gives, for each share of
first looks that find the job done, the requests per job and the time against the least the slots
and the rate allow (``max(mean / slots, 2 / rate)`` per job): no client does better at that many
requests. Written to ``bench/results/frontier.json``.

A second table (key suffix ``_credits_probe``) gives what one more source of news could reach:
``GET /v1/credits`` shows the account's ``used`` credits, which grow as its jobs succeed. A client
that asks it every ``P`` seconds (one request, whatever the jobs in flight) and looks at a job only
once ``used`` says it ended (at best, always the right job: no miss) has a mean lag of ``P / 2``:

    requests per job = 2 + (seconds per job) / P
    seconds per job  = max((mean length + P / 2) / slots, requests per job / rate)
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from bench.field import JOB, QUEUE

RESULTS = Path(__file__).resolve().parent / "results" / "frontier.json"


def frontier(
    slots: int, spread: float, rate: float, n: int = 200_000, seed: int = 1
) -> list[dict[str, float]]:
    rng = random.Random(seed)
    lengths = sorted(QUEUE + JOB * math.exp(rng.gauss(0.0, spread)) for _ in range(n))
    mean = sum(lengths) / n
    least = max(mean / slots, 2 / rate)
    rows = []
    for hit in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99):
        x = lengths[int(hit * (n - 1))]
        lag = sum(x - length for length in lengths if length <= x) / n
        requests = 2 + (1 - hit)
        per_job = max((mean + lag) / slots, requests / rate)
        rows.append(
            {
                "first_looks_that_find_it_done": hit,
                "first_look_s": round(x, 1),
                "requests_per_job": round(requests, 2),
                "mean_lag_s": round(lag, 1),
                "vs_least": round(per_job / least, 3),
            }
        )
    return rows


def credits_probe(
    slots: int, spread: float, rate: float, n: int = 200_000, seed: int = 1
) -> list[dict[str, float]]:
    """The best a client can reach that also asks the account's credits every ``P`` seconds."""
    rng = random.Random(seed)
    mean = sum(QUEUE + JOB * math.exp(rng.gauss(0.0, spread)) for _ in range(n)) / n
    least = max(mean / slots, 2 / rate)
    rows = []
    for period in (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 30.0):
        by_slots = (mean + period / 2) / slots
        by_rate = 2 / (rate - 1 / period) if rate > 1 / period else math.inf  # requests / rate, solved
        per_job = max(by_slots, by_rate)
        rows.append(
            {
                "probe_every_s": period,
                "requests_per_job": round(2 + per_job / period, 2),
                "mean_lag_s": round(period / 2, 1),
                "vs_least": round(per_job / least, 3),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--spread", type=float, default=0.3)
    parser.add_argument("--rate", type=float, default=1.0, help="requests a second (60 a minute: 1)")
    args = parser.parse_args()
    rows = frontier(args.slots, args.spread, args.rate)
    for row in rows:
        print(json.dumps(row))
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = f"slots{args.slots}_spread{args.spread}_rate{args.rate}"
    data[key] = rows
    data[f"{key}_credits_probe"] = probes = credits_probe(args.slots, args.spread, args.rate)
    for row in probes:
        print(json.dumps(row))
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
