"""A worker killed with ``kill -9``: how long until the account gets back what it held.

    python -m bench.killed [--stores local,redis] [--phases 0.5,5,9.5] [--engine/--no-engine]

With the default lease times (a slot 30 s, a credit reservation 60 s, a wait for a slot 2 s; the
heartbeat renews slots and reservations every 10 s), measured on the store's own state, polled
every 50 ms from the moment of the kill:

* **account**: a worker process takes 2 of the account's 2 slots, reserves 20 credits of a named
  budget and waits for a third slot (registered as waiting); it is killed ``phase`` seconds after
  a heartbeat was seen to renew its leases. Recorded: when its slots were free again, its credits
  unreserved, its wait gone, and when its leases were due to expire (as the store showed them).
* **engine**: two engine processes (``run_batch``) on the simulator, account cap 4 jobs, 8 s
  jobs: A holds the 4 slots and has reserved credits of a named budget, B waits for a slot; A is
  killed. Recorded: when A's slots and credits came back, and when B created its first job.

Results: bench/results/killed.json (with the load average at each run's start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from vance_provider.core.account import RESERVATION_TTL, SLOT_TTL, WAIT_TTL, open_account

RESULTS = Path(__file__).resolve().parent / "results" / "killed.json"
BASE_URL = "https://api.vanceai.bench"
BUDGET = "killed"
POLL = 0.05
HOLDER = "doomed-worker"


def holding_worker(url: str, key: str, ready: Any) -> None:
    """Take both slots, reserve 20 credits, wait for a third slot; hold it all until killed."""

    async def run() -> None:
        account = open_account(BASE_URL, key, url, budget=BUDGET, max_jobs=2, holder=HOLDER)
        for _ in range(2):
            await account.acquire_slot()
        await account.reserve(20.0)
        waiting = asyncio.get_running_loop().create_task(account.acquire_slot())
        ready.set()
        await waiting

    asyncio.run(run())


async def _watch(
    url: str, key: str, holder: str, t_kill: float, deadline: float, base_url: str = BASE_URL
) -> dict[str, Any]:
    """Poll the store from the kill until ``holder``'s slots, wait and reserved credits are gone."""
    seen: dict[str, Any] = {}
    async with open_account(base_url, key, url) as account:
        while time.time() < t_kill + deadline and len(seen) < 3:
            state = await account.slot_state()
            budget = await account.get_budget(BUDGET)
            since = round(time.time() - t_kill, 2)
            if "slots_back_s" not in seen and state.held_by(holder) == 0:
                seen["slots_back_s"] = since
            if "wait_gone_s" not in seen and holder not in {h for h, _ in state.waiting}:
                seen["wait_gone_s"] = since
            if "credits_back_s" not in seen and budget is not None and budget.reserved == 0:
                seen["credits_back_s"] = since
            await asyncio.sleep(POLL)
    return seen


async def account_run(url: str, phase: float) -> dict[str, Any]:
    key = f"sk_live_{uuid.uuid4().hex}"
    async with open_account(BASE_URL, key, url) as account:
        await account.set_budget(BUDGET, 100, "total")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    load = os.getloadavg()[0]
    proc = ctx.Process(target=holding_worker, args=(url, key, ready))
    proc.start()
    try:
        assert await asyncio.to_thread(ready.wait, 120), "the worker did not take its slots"
        async with open_account(BASE_URL, key, url) as account:
            first = max(e for _, _, e in (await account.slot_state()).leases)
            while True:  # a heartbeat renews the leases: their expiry moves forward
                state = await account.slot_state()
                if state.leases and max(e for _, _, e in state.leases) > first:
                    beat = state.now
                    break
                await asyncio.sleep(POLL)
            await asyncio.sleep(max(0.0, beat + phase - time.time()))
            before = await account.slot_state()
        t_kill = time.time()
        proc.kill()  # SIGKILL
        seen = await _watch(url, key, HOLDER, t_kill, RESERVATION_TTL + 30)
    finally:
        proc.kill()
        proc.join()
    return {
        "kind": "account",
        "phase_after_heartbeat_s": phase,
        "killed_after_heartbeat_s": round(t_kill - beat, 2),
        "lease_due_after_kill_s": round(max(e for _, _, e in before.leases) - t_kill, 2),
        **seen,
        "load_1m_start": round(load, 2),
    }


ENGINE = """
import asyncio, json, sys
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
url, token, src, dst, budget, owner = sys.argv[1:7]
extra = {"account_budget": budget} if budget != "none" else {}
async def main():
    async with AsyncVanceClient(token, base_url=url) as client:
        r = await run_batch(client, BatchSpec(src, dst, "upscale", {"scale": 2}, max_concurrency=4,
                                              poll_interval=0.5, owner=owner, **extra))
    print(json.dumps({"done": r.done}))
asyncio.run(main())
"""


def engine_run(url: str, tmp: Path) -> dict[str, Any]:
    """Worker A holds the account's 4 slots and reserved credits; B waits; A is killed."""
    from bench.run import make_images
    from vance_provider.sim import Account, SimConfig, SimulatorServer
    from vance_provider.sim.config import DEMO_OPEN_KEY

    config = SimConfig(
        accounts=[Account(credits=1e9)], queue_delay=0.0, time_per_job=8.0, max_concurrent_images=4, tick=0.05
    )
    run = Path(tempfile.mkdtemp(prefix="engine-", dir=tmp))
    make_images(run / "a", 40)
    make_images(run / "b", 8)
    env = {**os.environ, "VANCE_ACCOUNT_STORE": url, "VANCE_STATE_DIR": str(run / "state")}
    env["VANCE_ACCOUNT_MAX_JOBS"] = "4"
    load = os.getloadavg()[0]
    with SimulatorServer(config) as sim:
        api = sim.open_url

        async def setup() -> None:
            async with open_account(api, DEMO_OPEN_KEY, url) as account:
                await account.set_budget(BUDGET, 1e6, "total")

        asyncio.run(setup())

        def start(name: str, budget: str) -> subprocess.Popen[str]:
            argv = [
                sys.executable,
                "-c",
                ENGINE,
                api,
                DEMO_OPEN_KEY,
                str(run / name),
                str(run / f"out-{name}"),
            ]
            return subprocess.Popen(
                [*argv, budget, f"worker-{name}"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        async def state() -> tuple[Any, Any]:
            async with open_account(api, DEMO_OPEN_KEY, url) as account:
                return await account.slot_state(), await account.get_budget(BUDGET)

        a = start("a", BUDGET)
        b = None
        try:
            while True:  # A holds every slot, with credits reserved
                slots, budget = asyncio.run(state())
                if slots.held_by("worker-a") == 4 and budget is not None and budget.reserved > 0:
                    break
                time.sleep(POLL)
            b = start("b", "none")  # B draws on no budget: what is reserved is A's
            while "worker-b" not in {h for h, _ in asyncio.run(state())[0].waiting}:
                time.sleep(POLL)
            t_kill = time.time()
            a.send_signal(signal.SIGKILL)
            a.wait()
            seen = asyncio.run(_watch(url, DEMO_OPEN_KEY, "worker-a", t_kill, RESERVATION_TTL + 30, api))
            with sim.state.lock:
                created = [j.created_at for j in sim.state.jobs.values() if j.created_at > t_kill]
        finally:
            for p in (a, b):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
    return {
        "kind": "engine",
        **seen,
        "other_worker_first_job_s": round(min(created) - t_kill, 2) if created else None,
        "load_1m_start": round(load, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="local,redis")
    parser.add_argument("--phases", default="0.5,5,9.5", help="seconds after a heartbeat to kill")
    parser.add_argument("--engine", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    from tests.servers import RedisServer

    rows = []
    with RedisServer() as redis, tempfile.TemporaryDirectory(prefix="vance-killed-") as tmp:
        for store in args.stores.split(","):
            url = redis.url if store == "redis" else f"sqlite://{tmp}/{store}.sqlite3"

            async def phases(url: str = url) -> list[dict[str, Any]]:
                return list(
                    await asyncio.gather(*(account_run(url, float(p)) for p in args.phases.split(",") if p))
                )

            for row in asyncio.run(phases()):
                rows.append({"store": store, **row})
                print(json.dumps(rows[-1]), flush=True)
            if args.engine:
                rows.append({"store": store, **engine_run(url, Path(tmp))})
                print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    RESULTS.write_text(
        json.dumps(
            {
                "lease_times": {
                    "slot_ttl_s": SLOT_TTL,
                    "reservation_ttl_s": RESERVATION_TTL,
                    "wait_ttl_s": WAIT_TTL,
                },
                "heartbeat_s": min(SLOT_TTL, RESERVATION_TTL) / 3,
                "commit": commit.strip(),
                "machine_cpus": os.cpu_count(),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
