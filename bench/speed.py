"""Batch speed against the service's ceiling: the engine beside a baseline engine, the bound and a floor.

    python -m bench.speed [--baseline-ref REF] [--rounds 3] [--apis open,web]

For each API, in one run and against the same simulator settings (each in its own process):
- **bound**: what the service allows at best. Open API: max(N·T/C, 2·N/R), the protocol's minimum
  of 2 API calls per job (create, one poll that returns the signed link); web API: N·T/C.
- **floor**: a minimal client that knows T, keeps C jobs in flight and polls each job once at
  T after its creation: what any client reaches on this simulator (its scheduler tick and
  rendering make a job last a little longer than T).
- **engine**: this checkout's batch engine; **baseline**: the engine at ``--baseline-ref`` (default:
  the commit this session started from), checked out in a temporary git worktree.

Knobs via env: BENCH_N (1000), BENCH_T (0.25), BENCH_C (16), BENCH_R (100 requests/s per key, in
10-second windows), BENCH_TICK (simulator tick, 0.005 s). Results: bench/results/speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.run import RATE_WINDOW, free_port, make_images
from vance_provider.sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ENV = {
    k: float(os.environ.get(f"BENCH_{k}", d))
    for k, d in {"N": 1000, "T": 0.25, "C": 16, "R": 100, "TICK": 0.005}.items()
}
# The simulator's process runs without the cyclic garbage collector: its full collections paused
# the scheduler 40-60 ms a few times a run, so every job in flight ended that much late, a stall
# of the stand-in and not of the service (the floor and the engines meet the same simulator).
SIM = """
import gc, sys, time
gc.disable()
from vance_provider.sim import Account, SimConfig, SimulatorServer
t, c, r, tick, port = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
cfg = SimConfig(accounts=[Account(credits=1e9)], queue_delay=0.0, time_per_job=t, max_concurrent_images=c,
                rate_limit=r * int(sys.argv[6]), rate_window=float(sys.argv[6]), tick=tick, web_rate_limit=False,
                admin_routes=True)
with SimulatorServer(cfg, port=port):
    print("ready", flush=True)
    sys.stdin.read()
"""
ENGINE = """
import asyncio, json, sys, time
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
api, url, token, src, dst, c = sys.argv[1:7]
async def main():
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with AsyncVanceClient(token, base_url=url) as client:
        r = await run_batch(client, BatchSpec(src, dst, "upscale", {"scale": 2}, max_concurrency=int(c),
                                              poll_interval=0.5))
        counts = dict(client.request_counts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"done": r.done, "failed": r.failed, "wall": wall, "cpu": cpu, "requests": counts}))
asyncio.run(main())
"""


class Sim:
    def __init__(self, t: float, c: int, r: int, tick: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(t), str(c), str(r), str(tick), str(self.port), str(RATE_WINDOW)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SIM, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"

    def __enter__(self) -> Sim:
        return self

    def steady_requests_per_job(self) -> float:
        """HTTP requests per job in the steady state, over the middle 80 % of the jobs by creation
        (learning at the start and the tail left out).

        Where the log names each request's job (Open API: ``/jobs/{id}``, ``/storage/results/{id}``)
        each of these jobs' own requests are counted, and only jobs created after the key's first
        rate window: the simulator's windows are aligned to the clock, so the first is a part of a
        window with a whole window's budget, and requests do not bind then. Otherwise (web API: the
        job is named in the form body) every request received while those jobs were created is
        counted."""
        log = httpx.get(f"{self.url}/_sim/requests", timeout=60).json()
        created = sorted((r["at"], r["created_job"]) for r in log if r.get("created_job"))
        middle = created[len(created) // 10 : 9 * len(created) // 10]
        first_reset = (log[0]["at"] // RATE_WINDOW + 1) * RATE_WINDOW
        jobs = {job for at, job in middle if at >= first_reset}
        if not any(r["path"].startswith("/api/v1/jobs/") for r in log) or not jobs:
            lo, hi = middle[0][0], middle[-1][0]
            requests = sum(1 for r in log if lo <= r["at"] <= hi and not r["path"].startswith("/_sim"))
            return round(requests / len(middle), 3)
        return round(sum(1 for r in log if job_of(r) in jobs) / len(jobs), 3)

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(20)


def job_of(request: dict[str, Any]) -> str | None:
    """The job a logged request was about: the one it created, or the one its path names."""
    if request.get("created_job"):
        return str(request["created_job"])
    parts = request["path"].split("/")
    for name in ("jobs", "results"):
        if name in parts[:-1]:
            return parts[parts.index(name) + 1]
    return None


def field(answer: httpx.Response, *path: str) -> Any:
    """The value at ``path`` in ``answer``'s JSON; any other answer fails the run, saying what it was."""
    try:
        value = answer.json()
        for name in path:
            value = value[name]
        return value
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(
            f"floor: {answer.request.method} {answer.request.url.path} answered {answer.status_code}: "
            f"{answer.text[:1000]}"
        ) from None


def engine(api: str, sim: Sim, src: Path, dst: Path, c: int, pythonpath: Path) -> dict[str, Any]:
    token = DEMO_OPEN_KEY if api == "open" else DEMO_WEB_TOKEN
    out = subprocess.run(
        [sys.executable, "-c", ENGINE, api, sim.url, token, str(src), str(dst), str(c)],
        env={**os.environ, "PYTHONPATH": str(pythonpath)},
        capture_output=True,
        text=True,
        check=True,
        cwd=pythonpath,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    n = max(1, data["done"])
    storage = sum(v for k, v in data["requests"].items() if k in ("result_file", "put_upload"))
    api_calls = sum(data["requests"].values()) - storage
    return {
        "done": data["done"],
        "failed": data["failed"],
        "makespan_s": round(data["wall"], 2),
        "api_requests_per_job": round(api_calls / n, 2),
        "http_requests_per_job": round((api_calls + storage) / n, 2),
        "client_cpu_ms_per_job": round(data["cpu"] * 1000 / n, 2),
        "requests": data["requests"],
    }


async def floor(api: str, url: str, src: Path, n: int, t: float, c: int, r: int) -> dict[str, Any]:
    """The minimal client: it knows T and the limits. Inputs are uploaded ahead (C at most), C jobs
    are in flight, API calls are spaced at the rate limit, each job is polled at T (plus a tick),
    then every 20 ms, and the result is downloaded outside the job slot and stored in a folder.
    A create refused with a 429 is sent again after its Retry-After, with the same Idempotency-Key."""
    out = Path(tempfile.mkdtemp(prefix="floor-"))
    files = sorted(src.glob("*.jpg"))[:n]  # noqa: ASYNC240 - set-up, before the clock starts
    blobs = {f: f.read_bytes() for f in files}
    uploads, slots = asyncio.Semaphore(c), asyncio.Semaphore(c)
    requests = 0
    next_call = 0.0
    web = {"api_token": DEMO_WEB_TOKEN}
    auth = {"Authorization": f"Bearer {DEMO_OPEN_KEY}"}
    jconfig = json.dumps(
        {
            "name": "enlarge3",
            "config": {
                "module": "enlarge3",
                "module_params": {"model_name": "EnlargeStandard_2x_Stable", "scale": 2},
            },
        }
    )

    async def paced() -> None:
        """Space the Open API's calls at its rate limit (the web API has none here)."""
        nonlocal next_call, requests
        requests += 1
        if api == "open":
            now = time.monotonic()
            next_call = max(next_call + 1 / r, now)
            await asyncio.sleep(next_call - now)

    async def one(http: httpx.AsyncClient, f: Path) -> None:
        data = blobs[f]
        async with uploads:
            if api == "web":
                await paced()
                answer = await http.post("/web_api/v1/upload", data=web, files={"file": (f.name, data)})
                uid = field(answer, "data", "uid")
            await slots.acquire()
        try:
            if api == "web":
                await paced()
                created = time.monotonic()
                answer = await http.post(
                    "/web_api/v1/transform", data={**web, "uid": uid, "jconfig": jconfig}
                )
                job = field(answer, "data", "trans_id")
            else:
                key = {"Idempotency-Key": uuid.uuid4().hex}  # a create sent again makes no second job
                while True:
                    await paced()
                    created = time.monotonic()
                    answer = await http.post(
                        "/api/v1/jobs",
                        headers={**auth, **key},
                        files={"image": (f.name, data)},
                        data={"tool": "upscale", "config": '{"scale": 2}'},
                    )
                    if answer.status_code != 429:  # rate_limited or concurrency_limit_exceeded
                        break
                    await asyncio.sleep(float(answer.headers.get("Retry-After", 1)))
                job = field(answer, "job_id")
            await asyncio.sleep(max(0.0, created + t + 0.01 - time.monotonic()))
            while True:
                await paced()
                if api == "web":
                    answer = await http.post("/web_api/v1/progress", data={**web, "trans_id": job})
                    if answer.json()["data"]["status"] == "finish":
                        break
                else:
                    answer = await http.get(f"/api/v1/jobs/{job}", headers=auth)
                    if answer.status_code == 200 and answer.json()["status"] == "succeeded":
                        link = answer.json()["result_url"]
                        break
                await asyncio.sleep(0.02)
        finally:
            slots.release()
        if api == "web":
            await paced()
            answer = await http.post("/web_api/v1/download", data={**web, "trans_id": job})
        else:
            requests_storage.append(1)
            answer = await http.get(link)
        (out / f"{f.stem}.jpg").write_bytes(answer.content)

    requests_storage: list[int] = []
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=4 * c, max_keepalive_connections=4 * c)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(one(http, f) for f in files))
    wall = time.perf_counter() - t0
    shutil.rmtree(out)
    total = requests + len(requests_storage)
    return {"makespan_s": round(wall, 2), "http_requests_per_job": round(total / len(files), 2)}


def worktree(ref: str, where: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
        check=True,
        capture_output=True,
    )
    return where


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median makespan, with every run's makespan and steady-state requests per
    job beside it."""
    ranked = sorted(results, key=lambda one: one["makespan_s"])
    return {
        **ranked[len(ranked) // 2],
        "makespans_s": [one["makespan_s"] for one in results],
        "steady_http_requests_per_job_by_run": [one["steady_http_requests_per_job"] for one in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved; the median is kept")
    parser.add_argument("--baseline-ref", default="f89e956", help="git ref of the baseline engine")
    parser.add_argument("--apis", default="open,web")
    args = parser.parse_args()
    n, t, c, r, tick = int(ENV["N"]), ENV["T"], int(ENV["C"]), int(ENV["R"]), ENV["TICK"]
    out: dict[str, Any] = {
        "params": {
            "N": n,
            "T_s": t,
            "C": c,
            "R_per_s": r,
            "sim_tick_s": tick,
            "baseline_ref": args.baseline_ref,
            "rounds": args.rounds,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_images(src, n)
        base = worktree(args.baseline_ref, Path(tmp) / "baseline")
        try:
            for api in args.apis.split(","):
                bound = max(n * t / c, 2 * n / r) if api == "open" else n * t / c
                row: dict[str, Any] = {"bound_s": round(bound, 2)}
                runs: dict[str, list[dict[str, Any]]] = {"floor": [], "baseline": [], "engine": []}
                for k in range(args.rounds):  # interleaved, so that the machine's drift hits all three
                    with Sim(t, c, r, tick) as sim:
                        cpu0 = time.process_time()
                        one = asyncio.run(floor(api, sim.url, src, n, t, c, r))
                        one["client_cpu_ms_per_job"] = round((time.process_time() - cpu0) * 1000 / n, 2)
                        one["steady_http_requests_per_job"] = sim.steady_requests_per_job()
                        runs["floor"].append(one)
                    for name, path in (("baseline", base), ("engine", ROOT)):
                        with Sim(t, c, r, tick) as sim:
                            one = engine(api, sim, src, Path(tmp) / f"{name}-{api}-{k}", c, path)
                            one["steady_http_requests_per_job"] = sim.steady_requests_per_job()
                            runs[name].append(one)
                for name, results in runs.items():
                    row[name] = median_run(results)
                    row[name]["vs_bound"] = round(row[name]["makespan_s"] / bound, 2)
                for name in runs:
                    row[name]["vs_floor"] = round(row[name]["makespan_s"] / row["floor"]["makespan_s"], 2)
                out[api] = row
                print(api, json.dumps(row, indent=1), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
