"""The result cache: a batch whose results are all cached, beside the same batch uncached.

    python -m bench.cache

Same simulator settings as bench/speed.py (N=1000, T=0.25 s, C=16, R=100/s). The uncached run
fills a local cache; the cached run enhances a copy of the same files into a new destination.
Results: bench/results/cache.json (time, API requests, credits).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import make_images
from bench.speed import ENV, RESULTS, Sim
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
from vance_provider.sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN


async def one(api: str, url: str, src: Path, dst: Path, cache: Path, c: int) -> dict[str, Any]:
    token = DEMO_OPEN_KEY if api == "open" else DEMO_WEB_TOKEN
    t0 = time.perf_counter()
    async with AsyncVanceClient(token, base_url=url) as client:
        spec = BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, max_concurrency=c, cache=str(cache))
        result = await run_batch(client, spec)
        counts = dict(client.request_counts)
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "done": result.done,
        "cached": sum(1 for i in result.items if i.cached),
        "credits_spent": result.credits_spent,
        "credits_saved": result.credits_saved,
        "api_requests": counts,
    }


def main() -> None:
    n, t, c, r, tick = int(ENV["N"]), ENV["T"], int(ENV["C"]), int(ENV["R"]), ENV["TICK"]
    out: dict[str, Any] = {"params": {"N": n, "T_s": t, "C": c, "R_per_s": r, "cache": "local disk"}}
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "day1", Path(tmp) / "day2"
        make_images(first, n)
        shutil.copytree(first, second)
        for api in ("open", "web"):
            cache = Path(tmp) / f"cache-{api}"
            with Sim(t, c, r, tick) as sim:
                cold = asyncio.run(one(api, sim.url, first, Path(tmp) / f"out1-{api}", cache, c))
                warm = asyncio.run(one(api, sim.url, second, Path(tmp) / f"out2-{api}", cache, c))
            out[api] = {
                "uncached": cold,
                "cached": warm,
                "cached_vs_uncached_time": round(warm["seconds"] / cold["seconds"], 3),
            }
            print(api, json.dumps(out[api], indent=1), flush=True)
    out["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
