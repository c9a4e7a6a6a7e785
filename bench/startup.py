"""A big bucket started at once: time to the first job, total time, client CPU and peak RSS.

    python -m bench.startup [--sizes 10000,100000] [--tree PATH] [--label after] [--cap SECONDS]

Each run is its own process (the engine of ``--tree``, default this checkout, so an unchanged
checkout can be measured beside it: ``git archive <commit> | tar -x -C /tmp/base``), against the
simulator in another process (near-zero job time, 64 jobs at once, no rate limit: what is measured
is the engine). **Time to the first job** is from ``run_batch`` being called to the first job
created on the service (the first ``submit_checked`` answered); the CPU spent by then is beside
it. ``--cap`` ends a run that has not finished after that many seconds, and records how far it
got. Results go into ``bench/results/scale.json`` beside its earlier rows, under
``startup`` -> ``--label`` (``before``: the unchanged engine; ``after``).
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

from bench.run import make_images
from bench.speed import RESULTS, ROOT, Sim

ENGINE = """
import asyncio, json, resource, sys, time
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
from vance_provider.core.client import AsyncVanceClient as Client
url, token, src, dst, cap = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
first = {}
real = Client.submit_checked
async def submit_checked(self, *args, **kwargs):
    job = await real(self, *args, **kwargs)
    if not first:
        first.update(wall=time.perf_counter() - t0, cpu=time.process_time() - cpu0)
    return job
Client.submit_checked = submit_checked
seen = {"done": 0, "failed": 0}
def progress(p):
    seen["done"], seen["failed"] = p.done, p.failed
async def main():
    async with AsyncVanceClient(token, base_url=url) as client:
        spec = BatchSpec(src, dst, "upscale", {"scale": 2}, max_concurrency=64)
        try:
            r = await asyncio.wait_for(run_batch(client, spec, on_progress=progress), cap or None)
            return {"done": r.done, "failed": r.failed, "finished": True}
        except TimeoutError:
            return {**seen, "finished": False}
cpu0, t0 = time.process_time(), time.perf_counter()
out = asyncio.run(main())
out.update(seconds=time.perf_counter() - t0, cpu=time.process_time() - cpu0,
           peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, first=first)
print(json.dumps(out))
"""


def measure(tree: Path, src: Path, n: int, cap: float) -> dict[str, Any]:
    from vance_provider.sim import DEMO_OPEN_KEY

    with tempfile.TemporaryDirectory(prefix="startup-") as tmp, Sim(0.0, 64, 0, 0.005) as sim:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                ENGINE,
                sim.url,
                DEMO_OPEN_KEY,
                str(src),
                str(Path(tmp) / "out"),
                str(cap),
            ],
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
            cwd=tree,
            timeout=(cap + 600) if cap else None,
        )
        if proc.returncode:
            raise RuntimeError(proc.stderr[-4000:])
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        outer = time.perf_counter() - t0
    first = data.pop("first")
    return {
        "items": n,
        **{k: data[k] for k in ("finished", "done", "failed")},
        "time_to_first_job_s": round(first["wall"], 2) if first else None,
        "cpu_to_first_job_s": round(first["cpu"], 2) if first else None,
        "total_s": round(data["seconds"], 1),
        "client_cpu_s": round(data["cpu"], 1),
        "client_cpu_ms_per_item_done": round(data["cpu"] * 1000 / max(1, data["done"]), 2),
        "peak_rss_mb": round(data["peak_rss_mb"], 1),
        "process_s": round(outer, 1),
        "cap_s": cap or None,
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--tree", default=str(ROOT), help="the checkout whose engine runs")
    ap.add_argument("--label", default="after")
    ap.add_argument("--cap", type=float, default=0.0, help="end a run after this many seconds (0: none)")
    ap.add_argument("--inputs", default="", help="a folder holding <dir>/src<N> inputs, made if missing")
    args = ap.parse_args()
    tree = Path(args.tree).resolve()
    commit = (tree / "BASE_COMMIT").read_text().strip() if (tree / "BASE_COMMIT").exists() else None
    if commit is None:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True
        ).stdout.strip()
    out_file = RESULTS / "scale.json"
    whole = json.loads(out_file.read_text()) if out_file.exists() else {}
    results = whole.setdefault("startup", {})
    keep = Path(args.inputs) if args.inputs else Path(tempfile.mkdtemp(prefix="startup-inputs-"))
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        src = keep / f"src{n // 1000}k"
        if not src.exists():
            make_images(src, n)
        row = measure(tree, src, n, args.cap)
        print(json.dumps(row), flush=True)
        rows.append(row)
        results[args.label] = {
            "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "rows": rows,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(whole, indent=2) + "\n")


if __name__ == "__main__":
    main()
