"""K workers on one account: makespan, 429s, refused creations, overspend, shard finish spread.

    python -m bench.scaleout --label before [--n 1000] [--workers 1 4 8 16]
    python -m bench.scaleout --label after --baseline before=/path/to/other/checkout [--store local] [--job-time 1.0]

K engine processes (plain ``run_batch``, one shard each: 1/K of the N inputs in a sub-folder,
its own destination) share one account (one key) of the simulator, whose limits do not change
with K: 16 jobs in flight, ``RATE`` requests a second (fixed 1 s windows), 0.25 s jobs. Every
worker is configured as a user would configure each task on their own: ``max_concurrency`` the
account's 16 jobs, and ``credit_budget`` the account's budget (``on_insufficient_credits=
"partial"``). K = 1 is one process doing all the work, the baseline. Each worker imports the
engine and the store's client before the common start: a process's imports are paid once, not
per batch (the makespan still counts each worker's start: its client, store connection, listing).

Two runs per K:

* **speed** (no budget): makespan (the last shard's end, from a common start), the spread of the
  shards' finish times, 429s per job (any request), creations refused for the account's
  concurrency (``concurrency_limit_exceeded``), the most jobs the simulator held at once;
* **budget**: every worker given the account's budget of ``BUDGET_SHARE * N`` credits: the
  credits the account was charged, and how far over the budget that is.

Every worker's environment names one account store, a Redis server (tests/servers.py) as a
multi-host deployment would (``VANCE_ACCOUNT_STORE``, docs/account.md); an engine that does not
use the store ignores it, so the same bench measures "before" and "after". A named budget is set
in the store before the budget run when the engine has it (``vance_provider.core.account``).
Results: bench/results/scaleout.json, under ``--label``.

``--baseline LABEL=PATH`` runs the engine of another checkout (a ``git worktree`` of the commit to
compare with) beside this one, K by K and run by run, so both meet the same load; its rows go
under LABEL. ``--store local`` gives every worker of a run one SQLite file instead of Redis. Each
row records the machine's load average (1 min) when it started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import make_images, process_cpu_seconds

RESULTS = Path(__file__).resolve().parent / "results" / "scaleout.json"
SLOTS = 16
RATE = 100  # requests a second, per key (fixed windows of 1 s)
JOB_TIME = 0.25
BUDGET_SHARE = 0.5
BUDGET_NAME = "scaleout"

WORKER = """
import asyncio, json, os, resource, sys, time
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
try:  # the store's client is imported once per process too (redis-py: ~0.15 s of CPU)
    import redis.asyncio
except ImportError:
    pass
url, token, src, dst, budget = sys.argv[1:6]
budget = float(budget) if budget != "none" else None
print("ready", flush=True)
sys.stdin.readline()
async def main():
    t0 = time.time()
    extra = {}
    if budget is not None:
        extra = {"credit_budget": budget, "on_insufficient_credits": "partial"}
        if "account_budget" in BatchSpec.__dataclass_fields__:  # the account store's named budget
            extra["account_budget"] = os.environ["SCALEOUT_BUDGET_NAME"]
    error = None
    try:
        async with AsyncVanceClient(token, base_url=url) as client:
            r = await run_batch(client, BatchSpec(src, dst, "upscale", {"scale": 2}, max_concurrency=16,
                                                  poll_interval=0.5, **extra))
        done, spent = r.done, r.credits_spent
    except Exception as exc:
        done, spent, error = 0, 0.0, f"{type(exc).__name__}: {exc}"
    use = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"start": t0, "end": time.time(), "done": done, "spent": spent, "error": error,
                      "cpu_s": use.ru_utime + use.ru_stime}))
asyncio.run(main())
"""


class CreateRefusals:
    """ASGI middleware in front of the simulator: the answers to job creations, by error code."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.refused_concurrency = 0
        self.refused_rate = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/v1/jobs":
            await self.app(scope, receive, send)
            return
        status = {"code": 0}

        async def watching_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and status["code"] == 429:
                body = message.get("body", b"")
                if b"concurrency_limit_exceeded" in body:
                    self.refused_concurrency += 1
                elif body:
                    self.refused_rate += 1
            await send(message)

        await self.app(scope, receive, watching_send)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def mean_overlap(intervals: list[tuple[float, float]]) -> float:
    """The jobs in flight on average, from the first creation to the last end."""
    if not intervals:
        return 0.0
    span = max(e for _, e in intervals) - min(s for s, _ in intervals)
    return sum(e - s for s, e in intervals) / span if span > 0 else 0.0


def one_run(
    k: int,
    n: int,
    root: Path,
    store_url: str,
    budget: float | None,
    engine: Path = Path.cwd(),
    store_pid: int | None = None,
) -> dict[str, Any]:
    from vance_provider.sim import Account, SimConfig, SimulatorServer
    from vance_provider.sim.config import DEMO_OPEN_KEY

    config = SimConfig(
        accounts=[Account(credits=1e9)],
        queue_delay=0.0,
        time_per_job=JOB_TIME,
        max_concurrent_images=SLOTS,
        rate_limit=RATE,
        rate_window=1.0,
        tick=0.01,
    )
    run = Path(tempfile.mkdtemp(prefix=f"k{k}-{'budget' if budget is not None else 'speed'}-", dir=root))
    shards = []
    for s in range(k):
        src = run / "in" / f"s{s}"
        make_images(src, n // k + (1 if s < n % k else 0))
        shards.append((src, run / "out" / f"s{s}"))
    load_start = os.getloadavg()[0]
    store_cpu_start = _process_cpu(store_pid)
    sim = SimulatorServer(config)
    refusals = CreateRefusals(sim.app)
    sim._server.config.app = refusals
    sim.start()
    env = {
        **os.environ,
        "VANCE_ACCOUNT_STORE": store_url,
        "VANCE_STATE_DIR": str(run / "state"),
        "SCALEOUT_BUDGET_NAME": BUDGET_NAME,
        "VANCE_ACCOUNT_MAX_JOBS": str(SLOTS),  # the account's cap, where the engine has the store
    }
    _set_store_budget(sim.open_url, DEMO_OPEN_KEY, store_url, budget)
    argv = [sys.executable, "-c", WORKER, sim.open_url, DEMO_OPEN_KEY]
    try:
        procs = [
            subprocess.Popen(
                [*argv, str(src), str(dst), "none" if budget is None else str(budget)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=engine,  # `python -c` imports vance_provider from the working directory first
            )
            for src, dst in shards
        ]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go, sim_go = time.time(), sim.state.clock.now()
        bench_cpu_start = time.process_time()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=1800)
            outs.append(json.loads(out.strip().splitlines()[-1]))
        with sim.state.lock:
            requests = list(sim.state.requests)
            jobs = list(sim.state.jobs.values())
            charged = sum(e.amount for e in sim.state.charges())
            now = sim.state.clock.now()
        simulator_cpu = time.process_time() - bench_cpu_start
        store_cpu = _process_cpu(store_pid) - store_cpu_start
    finally:
        sim.stop()
    load = os.getloadavg()[0]
    ends = sorted(o["end"] - go for o in outs)
    n429 = sum(1 for r in requests if r.status == 429)
    created = len(jobs)
    result: dict[str, Any] = {
        "workers": k,
        "n": n,
        "done": sum(o["done"] for o in outs),
        "errors": [o["error"] for o in outs if o["error"]],
        "makespan_s": round(ends[-1], 2),
        "shard_finish_s": {
            "first": round(ends[0], 2),
            "last": round(ends[-1], 2),
            "spread": round(ends[-1] - ends[0], 2),
            "last_over_first": round(ends[-1] / ends[0], 3) if ends[0] > 0 else None,
            "all": [round(e, 2) for e in ends],
        },
        "requests": len(requests),
        "requests_429": n429,
        "429_per_job": round(n429 / max(1, created), 3),
        "creates_refused_concurrency": refusals.refused_concurrency,
        "creates_refused_rate": refusals.refused_rate,
        "jobs_created": created,
        # from the common start to the first job created, and from there to the last job's end
        "first_job_s": round(min(j.created_at for j in jobs) - sim_go, 2) if jobs else None,
        "service_span_s": round(
            max((j.finished_at or now) for j in jobs) - min(j.created_at for j in jobs), 2
        )
        if jobs
        else None,
        "most_jobs_in_flight": max_overlap([(j.created_at, j.finished_at or now) for j in jobs]),
        "mean_jobs_in_flight": round(mean_overlap([(j.created_at, j.finished_at or now) for j in jobs]), 2),
        "credits_charged": round(charged, 3),
        # CPU seconds from "go" to the end: the workers (each its whole life, start-up included),
        # the simulator (this process) and the store's server; cores_busy = their sum / makespan.
        "cpu_s": {
            "workers": round(sum(o.get("cpu_s", 0.0) for o in outs), 2),
            "simulator": round(simulator_cpu, 2),
            "store": round(store_cpu, 2),
        },
        "load_1m_start": round(load_start, 2),
        "load_1m_end": round(load, 2),
    }
    cpu = sum(result["cpu_s"].values())
    result["cpu_ms_per_job"] = round(1000 * cpu / max(1, created), 2)
    result["cores_busy"] = round(cpu / ends[-1], 2) if ends[-1] > 0 else None
    if budget is not None:
        result["budget"] = budget
        result["credits_over_budget"] = round(max(0.0, charged - budget), 3)
    return result


def _process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used; 0 where unknown."""
    if pid is None:
        return 0.0
    try:
        return process_cpu_seconds(pid)
    except OSError:
        return 0.0


def _set_store_budget(base_url: str, key: str, store_url: str, budget: float | None) -> None:
    """Set (or reset) the account's named budget in the store, when the engine has the store."""
    try:
        from vance_provider.core.account import set_budget
    except ImportError:
        return
    if budget is None:
        return
    # A fresh budget for each run: a new period ("total") starts with nothing spent.
    set_budget(BUDGET_NAME, budget, "day", api_base_url=base_url, api_key=key, store_url=store_url)
    set_budget(BUDGET_NAME, budget, "total", api_base_url=base_url, api_key=key, store_url=store_url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True, help="'before' or 'after' (the engine measured)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--baseline", metavar="LABEL=PATH", help="also run the engine of the checkout PATH, under LABEL"
    )
    parser.add_argument("--engine", default=".", help="the checkout whose engine runs under --label")
    parser.add_argument("--store", choices=["redis", "local"], default="redis")
    parser.add_argument("--budget", choices=["both", "speed"], default="both", help="'speed': no budget runs")
    parser.add_argument("--job-time", type=float, default=JOB_TIME, help="seconds per job on the simulator")
    parser.add_argument(
        "--repeat", type=int, default=1, help="each repeat runs the engines in the other order"
    )
    args = parser.parse_args()
    globals()["JOB_TIME"] = args.job_time  # one_run and the profile read it
    from tests.servers import RedisServer

    engines = [(args.label, Path(args.engine).resolve())]
    if args.baseline:
        name, _, path = args.baseline.partition("=")
        engines.insert(0, (name, Path(path).resolve()))
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in engines}
    budgets = (None,) if args.budget == "speed" else (None, BUDGET_SHARE * args.n)
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="vance-scaleout-") as tmp:
        store_pid = redis.process.pid if args.store == "redis" and redis.process else None
        for repeat in range(args.repeat):
            for k in args.workers:
                for budget in budgets:
                    for label, engine in engines if repeat % 2 == 0 else engines[::-1]:
                        # A clean store for each run: nothing learned, held or spent by the previous one.
                        import redis as redis_client

                        redis_client.Redis.from_url(redis.url).flushall()
                        url = redis.url
                        if args.store == "local":
                            kind = "speed" if budget is None else "budget"
                            url = f"sqlite://{tmp}/{label}-k{k}-{kind}-{repeat}.sqlite3"
                        row = one_run(k, args.n, Path(tmp), url, budget, engine, store_pid)
                        row["repeat"] = repeat
                        print(label, json.dumps(row), flush=True)
                        rows[label].append(row)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["profile"] = {
        "account": f"one key; {SLOTS} jobs in flight; {RATE} requests/s (1 s windows); 0.25 s jobs"
        " unless a label's job_time_s says otherwise",
        "workers": "K engine processes (run_batch), one shard of N/K each, max_concurrency=16 each",
        "budget": f"{BUDGET_SHARE} * N credits, given to every worker (credit_budget, partial)",
        "account_store": "VANCE_ACCOUNT_STORE=redis://... (tests/servers.py RedisServer) in every worker",
    }
    for label, engine in engines:
        commit = subprocess.run(
            ["git", "-C", str(engine), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout
        data[label] = {
            "commit": commit.strip(),
            "n": args.n,
            "machine_cpus": os.cpu_count(),
            "store": args.store,
            "job_time_s": args.job_time,
            "run_beside": [other for other, _ in engines if other != label],
            "rows": rows[label],
        }
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
