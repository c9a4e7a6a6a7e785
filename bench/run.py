"""Benchmarks against the simulator, each side by side with a baseline in the same run.

    python -m bench.run [makespan|memory|all]

Results go to bench/results/*.json and bench/results/README.md. Knobs via env:
BENCH_N (1000), BENCH_T (job seconds, 0.25), BENCH_C (concurrency cap, 16),
BENCH_R (requests/s per key, 100), BENCH_BASELINE_N (20), BENCH_BIG_MB (1024).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
from vance_provider.sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN

RESULTS = Path(__file__).parent / "results"
ENV = {
    k: float(os.environ.get(f"BENCH_{k}", d))
    for k, d in {"N": 1000, "T": 0.25, "C": 16, "R": 100, "BASELINE_N": 20, "BIG_MB": 1024}.items()
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimProcess:
    """The simulator in its own process, so the client's CPU time is measured alone."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "vance_provider.sim.cli", "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                httpx.get(f"{self.url}/api/v1/credits", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("simulator did not start")

    def __enter__(self) -> SimProcess:
        return self

    def cpu_seconds(self) -> float:
        """CPU time the simulator process has used so far (user + system)."""
        return process_cpu_seconds(self.proc.pid)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (32, 24), (i % 256, (i * 7) % 256, 90)).save(folder / f"img{i:05d}.jpg")


RATE_WINDOW = 10  # seconds: R requests/s on average, as R * 10 per 10-second window


def sim_args(t: float, c: int, r: int) -> list[str]:
    return [
        "--queue-delay",
        "0",
        "--time-per-job",
        str(t),
        "--max-concurrent-images",
        str(c),
        "--rate-limit",
        str(r * RATE_WINDOW),
        "--rate-window",
        str(RATE_WINDOW),
        "--credits",
        "1000000",
    ]


async def engine_run(api: str, base_url: str, src: Path, dst: Path, c: int) -> dict[str, Any]:
    token = DEMO_OPEN_KEY if api == "open" else DEMO_WEB_TOKEN
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with AsyncVanceClient(token, base_url=base_url) as client:
        result = await run_batch(
            client,
            BatchSpec(str(src), str(dst), "upscale", {"scale": 2}, max_concurrency=c, poll_interval=0.5),
        )
        counts = client.request_counts
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = result.done
    api_requests = sum(v for k, v in counts.items() if k not in ("result_file",))
    return {
        "jobs": n,
        "failed": result.failed,
        "makespan_s": round(wall, 2),
        "requests": counts,
        "requests_per_job": round(sum(counts.values()) / max(1, n), 2),
        "api_requests_per_job": round(api_requests / max(1, n), 2),
        "client_cpu_ms_per_job": round(cpu * 1000 / max(1, n), 2),
    }


def baseline_run(api: str, base_url: str, src: Path, dst: Path, n: int) -> dict[str, Any]:
    """What the vendor's sample code does: one file at a time, poll every 2 s."""
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.jpg"))[:n]
    cpu0, t0 = time.process_time(), time.perf_counter()
    requests = 0
    with httpx.Client(base_url=base_url, timeout=30) as http:
        for f in files:
            if api == "web":
                token = {"api_token": DEMO_WEB_TOKEN}
                uid = http.post("/web_api/v1/upload", data=token, files={"file": f.open("rb")}).json()[
                    "data"
                ]["uid"]
                jconfig = {
                    "name": "enlarge3",
                    "config": {
                        "module": "enlarge3",
                        "module_params": {"model_name": "EnlargeStandard_2x_Stable", "scale": 2},
                    },
                }
                tid = http.post(
                    "/web_api/v1/transform", data={**token, "uid": uid, "jconfig": json.dumps(jconfig)}
                ).json()["data"]["trans_id"]
                requests += 2
                while True:
                    requests += 1
                    status = http.post("/web_api/v1/progress", data={**token, "trans_id": tid}).json()[
                        "data"
                    ]["status"]
                    if status in ("finish", "fatal"):
                        break
                    time.sleep(2)
                (dst / f.name).write_bytes(
                    http.post("/web_api/v1/download", data={**token, "trans_id": tid}).content
                )
                requests += 1
            else:
                auth = {"Authorization": f"Bearer {DEMO_OPEN_KEY}"}
                job = http.post(
                    "/api/v1/jobs",
                    headers=auth,
                    files={"image": f.open("rb")},
                    data={"tool": "upscale", "config": '{"scale": 2}'},
                ).json()["job_id"]
                requests += 1
                while True:
                    requests += 1
                    r = http.get(f"/api/v1/jobs/{job}", headers=auth)
                    if r.status_code == 429:
                        time.sleep(float(r.headers.get("retry-after", 1)))
                        continue
                    if r.json()["status"] in ("succeeded", "failed"):
                        break
                    time.sleep(2)
                loc = http.get(f"/api/v1/jobs/{job}/result", headers=auth).headers["location"]
                (dst / f.name).write_bytes(httpx.get(loc).content)
                requests += 2
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "jobs": len(files),
        "makespan_s": round(wall, 2),
        "per_job_s": round(wall / len(files), 3),
        "requests_per_job": round(requests / len(files), 2),
        "client_cpu_ms_per_job": round(cpu * 1000 / len(files), 2),
    }


def makespan() -> dict[str, Any]:
    n, t, c, r, nb = int(ENV["N"]), ENV["T"], int(ENV["C"]), int(ENV["R"]), int(ENV["BASELINE_N"])
    out: dict[str, Any] = {
        "params": {"N": n, "T_s": t, "C": c, "R_per_s": r, "baseline_N": nb},
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_images(src, n)
        for api in ("open", "web"):
            with SimProcess(*sim_args(t, c, r)) as sim:
                eng = asyncio.run(engine_run(api, sim.url, src, Path(tmp) / f"out-{api}", c))
            with SimProcess(*sim_args(t, c, r)) as sim:
                base = baseline_run(api, sim.url, src, Path(tmp) / f"base-{api}", nb)
            shutil.rmtree(Path(tmp) / f"out-{api}", ignore_errors=True)
            # Physical bound: the cap allows C jobs at a time; the rate limit R requests/s (Open API only).
            api_reqs = eng["api_requests_per_job"] * n
            bound = max(n * t / c, api_reqs / r if api == "open" else 0.0)
            baseline_extrapolated = base["per_job_s"] * n
            out[api] = {
                "engine": eng,
                "baseline": base,
                "physical_bound_s": round(bound, 2),
                "engine_vs_bound": round(eng["makespan_s"] / bound, 2),
                "baseline_makespan_extrapolated_s": round(baseline_extrapolated, 1),
                "speedup_vs_baseline": round(baseline_extrapolated / eng["makespan_s"], 1),
            }
            print(api, json.dumps(out[api], indent=1), flush=True)
    return out


MEMORY_SCRIPT = r"""
import asyncio, sys, time
import fsspec
mode, src, dst, url = sys.argv[1:5]
t0 = time.perf_counter()
if mode == "fsspec_copy":
    with fsspec.open(src, "rb") as i, fsspec.open(dst, "wb") as o:
        while chunk := i.read(1 << 20):
            o.write(chunk)
else:
    from vance_provider.core import AsyncVanceClient
    from vance_provider.sim import DEMO_OPEN_KEY
    async def main():
        async with AsyncVanceClient(DEMO_OPEN_KEY, base_url=url) as c:
            import os
            size = os.path.getsize(src)
            if mode == "client_upload":
                await c.backend._upload_video(src, size)
            else:
                await c.backend.stream_to("download", lambda: c.backend.http.stream("GET", url + "/big.mp4"),
                                          dst, size, lambda r: "mp4")
    asyncio.run(main())
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, inherited at fork).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(hwm, time.perf_counter() - t0)
"""


def memory() -> dict[str, Any]:
    """Peak RSS while streaming a large file: client upload / download vs a plain fsspec copy."""
    mb = int(ENV["BIG_MB"])
    out: dict[str, Any] = {"file_mb": mb}
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.mp4"
        with big.open("wb") as fh:
            block = os.urandom(1 << 20)
            for _ in range(mb):
                fh.write(block)
        port = free_port()
        static = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with SimProcess("--credits", "1000") as sim:
                time.sleep(0.5)
                for mode, url in (
                    ("fsspec_copy", ""),
                    ("client_upload", sim.url),
                    ("client_download", f"http://127.0.0.1:{port}"),
                ):
                    dst = Path(tmp) / f"out-{mode}.mp4"
                    res = subprocess.run(
                        [sys.executable, "-c", MEMORY_SCRIPT, mode, str(big), str(dst), url],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    rss_kb, secs = res.stdout.split()
                    out[mode] = {
                        "peak_rss_mb": round(int(rss_kb) / 1024, 1),
                        "seconds": round(float(secs), 2),
                        "mb_per_s": round(mb / float(secs), 1),
                    }
                    if dst.exists():
                        assert dst.stat().st_size == big.stat().st_size, mode
                        dst.unlink()
                    print(mode, out[mode], flush=True)
        finally:
            static.terminate()
    base = out["fsspec_copy"]["peak_rss_mb"]
    out["upload_rss_vs_fsspec"] = round(out["client_upload"]["peak_rss_mb"] / base, 2)
    out["download_rss_vs_fsspec"] = round(out["client_download"]["peak_rss_mb"] / base, 2)
    return out


def write(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("makespan", "all"):
        write("makespan", makespan())
    if which in ("memory", "all"):
        write("memory", memory())


if __name__ == "__main__":
    main()
