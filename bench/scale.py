"""Cost per item as a batch grows: client CPU, storage requests, bookkeeping writes and bytes per item.

    python -m bench.scale [N ...]        (default: 1000 10000)

Near-zero job time (the simulator's jobs take ~0 s, no rate limit), so what is measured is the
engine's own work per item. The manifest's writes are counted by wrapping the one function every
bookkeeping write goes through; storage requests by counting the calls that would each be one
request on an object store (list, stat, open, move, delete, mkdir) on the local filesystem.
Results: bench/results/scale.json, each N beside the first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from bench.run import make_images
from bench.speed import RESULTS, Sim
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
from vance_provider.core.state import manifest as manifest_module
from vance_provider.sim import DEMO_OPEN_KEY

# Local filesystem calls that are one request each on an object store (exists() is info()).
STORAGE_CALLS = ("ls", "info", "_open", "mv", "rm_file", "makedirs", "cp_file")


def count_storage_calls(counter: dict[str, int]) -> dict[str, Any]:
    """Wrap LocalFileSystem's request-like methods to count calls; returns the originals."""
    originals = {name: getattr(LocalFileSystem, name) for name in STORAGE_CALLS}
    for name, real in originals.items():

        def counted(self: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            counter["calls"] += 1
            return _real(self, *args, **kwargs)

        setattr(LocalFileSystem, name, counted)
    return originals


def measure(n: int) -> dict[str, Any]:
    writes = {"calls": 0, "bytes": 0}
    storage = {"calls": 0}
    real = manifest_module.write_bytes_atomic

    def counted(url: str, data: bytes, storage_options: Any = None) -> None:
        writes["calls"] += 1
        writes["bytes"] += len(data)
        real(url, data, storage_options)

    manifest_module.write_bytes_atomic = counted  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            make_images(src, n)
            with Sim(0.0, 64, 0, 0.005) as sim:

                async def run() -> Any:
                    async with AsyncVanceClient(DEMO_OPEN_KEY, base_url=sim.url) as client:
                        spec = BatchSpec(
                            str(src), str(Path(tmp) / "out"), "upscale", {"scale": 2}, max_concurrency=64
                        )
                        return await run_batch(client, spec)

                originals = count_storage_calls(storage)
                try:
                    cpu0, t0 = time.process_time(), time.perf_counter()
                    result = asyncio.run(run())
                    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
                finally:
                    for name, method in originals.items():
                        setattr(LocalFileSystem, name, method)
    finally:
        manifest_module.write_bytes_atomic = real  # type: ignore[assignment]
    return {
        "items": n,
        "done": result.done,
        "seconds": round(wall, 1),
        "client_cpu_ms_per_item": round(cpu * 1000 / n, 2),
        "storage_requests_per_item": round(storage["calls"] / n, 3),
        "manifest_writes_per_item": round(writes["calls"] / n, 4),
        "manifest_bytes_per_item": round(writes["bytes"] / n, 1),
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    rows = [measure(n) for n in sizes]
    for row in rows:
        for key in (
            "client_cpu_ms_per_item",
            "storage_requests_per_item",
            "manifest_writes_per_item",
            "manifest_bytes_per_item",
        ):
            row[f"{key}_vs_first"] = round(row[key] / rows[0][key], 2) if rows[0][key] else None
        print(json.dumps(row), flush=True)
    out = {"rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
