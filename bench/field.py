"""The field profile: the vendor's documented limits, time-scaled.

    python -m bench.field [--scale 60] [--sizes 30,300,3000] [--apis open,web] [--spread 0.3]
    python -m bench.field --sizes 30,300 --apis open --stores local,none \
        [--baseline before=/path/to/other/checkout] [--repeat 3] --out bench/results/field-store.json

The Open API document's window is 60 requests a minute per key, its example upscale (12 MP) ran
42 s from ``created_at`` to ``finished_at``, and its polling guidance is about 2 s for images; the
web API's suggests querying ``progress`` every 2 s. So: image jobs of 2 s queueing + 40 s processing
with a log-normal spread (``--spread``, sigma), 16 in flight (the account's cap, the engine's
``max_concurrency``), 60 requests per 60 s window per key, N = 30, 300 and 3000.

``--media video`` (Open API): "videos of minutes", 4 in flight (the documented video cap): 2 s
clips at 50 s of processing a second of video after the job's 40 s, so ~2.4 min jobs with the same
spread, looked at as the engine looks at videos (2.5 times less often than images: 5 s, the vendor's
"5-10 s"). Each needs three rate-limited calls at least: the upload's POST, the creation, a poll.

The simulator runs ``--scale`` times faster than the wall clock (``SimConfig.time_scale``): every
time on its clock shrinks together, and it tells the client wall-clock times. Every figure here is
in the service's (simulated) seconds. The engine runs as it is (``run_batch``, in its own process)
with the vendor's guidance as its poll interval, scaled the same way (2 s / scale, at most
15 s / scale); its other constants (retry backoff, timeouts) are in wall seconds and are not scaled.
The inputs are thumbnails: the simulator takes the job time from the profile, not the pixels.

The web API documents no rate limit; here it gets the same 60 a minute (HTTP 429 with the Open
API's headers, as a gateway would answer), so that both APIs meet the same budget.

Measured from the simulator's own request log and job records (its clock):

- **makespan**: the engine's wall time times the scale; and the service span, from the first request to
  the last, on the simulator's clock.
- **requests per job**: API requests (rate-limited; not the storage downloads) over N, and in the
  steady state: each job's own requests (its creation, polls, result and download, and for the web
  API its upload), over the middle 80 % of jobs by creation that were created after the first
  window's reset; polls per job likewise; 429s by kind.
- **bound**: the windowed bound, max of (a) the rate: the requests the protocol needs at least
  (Open API 2 per job: create, one poll that sees it done and carries the signed link; web API 4:
  upload, transform, one progress, download) counted in windows as the simulator aligns them (the
  first window, from the first request to its reset, is partial with a whole budget): the last
  request cannot go before the start of the window that holds it; and (b) the account's slots: the
  jobs' own times (as the simulator drew them, in the order they started) on 16 slots, each job
  started as soon as one is free. ``ideal``: an omniscient client
  (knows every job's end, spends each window's budget on creations first, polls each job once at
  its end or at the next budget), on the same windows and job times: a schedule, not a bound.
  ``plain_2N_over_R``: the plain figure, for comparison (not a lower bound: windows are aligned).

``--mixed``: inputs of several sizes whose jobs take as long as their size says (photos of 0.02,
0.12 and 0.48 MP at 4 s plus 100 s a megapixel, sharpened; clips of 0.5 to 4 s), in turn.

``--stores local,none`` runs each size once per account store (``VANCE_ACCOUNT_STORE``; ``local``
in a fresh state folder each run), side by side (``process``: the account on a store in the
engine's own memory, so no round trip: the account's pacing without the store's cost); ``--baseline LABEL=PATH`` (one or more) runs the engine of
another checkout too (its ``local`` runs: ``none`` does not use the account), and ``--repeat``
does it all again. These runs, each with the load average at its start, go under ``runs`` and
``summary`` in ``--out``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

from bench.run import free_port, make_images
from vance_provider.sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
WINDOW, LIMIT, SLOTS = 60.0, 60, 16  # the documented window, its budget; the account's image cap
QUEUE, JOB = 2.0, 40.0  # seconds: a job's queueing, its processing (before the spread)
GUIDANCE = 2.0  # seconds between looks at an image job, as the vendor advises
# ``--media video``: 2 s clips at 50 s of processing per second of video, so jobs of 40 + 100 s
# (before the spread): "videos of minutes", 4 in flight (the simulator's video cap, as documented).
CLIP_SECONDS, VIDEO_PER_SECOND, VIDEO_SLOTS = 2.0, 50.0, 4
MEDIA = "image"
# ``--mixed``: inputs of several sizes, whose jobs take as long as their size says. Photos of 0.02,
# 0.12 and 0.48 MP at 4 s a job plus 100 s a megapixel (6, 16 and 52 s with the queueing), sharpened
# (the size kept). Small pixels, as if megapixels were hundreds: the simulator renders each result
# before the job ends, and its time-scaled clock would count a big render 60 times over. Clips of
# 0.5 to 4 s (65-240 s).
MIXED = False
MIXED_PHOTOS = ((160, 120), (400, 300), (800, 600))
MIXED_JOB, PER_MEGAPIXEL = 4.0, 100.0
MIXED_CLIPS = (0.5, 1.0, 2.0, 4.0)
# The protocol's least rate-limited calls per job, as (before its end, after it): Open API image:
# the creation, then one poll that sees it done and carries the signed link; web API: the upload
# and the transform, then one progress and the download; Open API video: the upload's POST and the
# creation, then one poll.
MIN_CALLS = {("open", "image"): (1, 1), ("web", "image"): (2, 2), ("open", "video"): (2, 1)}
TOOLS = {"image": ("upscale", {"scale": 4}), "video": ("video_upscale", {"scale": 2})}


def min_requests(api: str) -> int:
    return sum(MIN_CALLS[(api, MEDIA)])


SIM = """
import gc, json, sys
gc.disable()
from vance_provider.sim import Account, SimConfig, SimulatorServer
a = json.loads(sys.argv[1])
cfg = SimConfig(accounts=[Account(credits=1e9)], queue_delay=a["queue"], time_per_job=a["job"],
                time_per_megapixel=a["per_megapixel"],
                time_spread=a["spread"], max_concurrent_images=a["slots"], max_concurrent_videos=a["slots"],
                time_per_video_second=a["video_per_second"], rate_limit=a["limit"],
                rate_window=a["window"], web_rate_limit=True, time_scale=a["scale"], admin_routes=True,
                faults=__import__("vance_provider.sim", fromlist=["Faults"]).Faults(seed=a["seed"]))
with SimulatorServer(cfg, port=a["port"]):
    print("ready", flush=True)
    sys.stdin.read()
"""
ENGINE = """
import asyncio, json, sys, time
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
url, token, src, dst, c, poll, max_poll, tool, options = sys.argv[1:10]
async def main():
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with AsyncVanceClient(token, base_url=url) as client:
        # The backend's floor between looks at a running video (the vendor's 5 s), scaled as the
        # poll interval is (2 s for images, 5 s for videos).
        client.backend.video_poll_interval = float(poll) * 2.5
        r = await run_batch(client, BatchSpec(src, dst, tool, json.loads(options), max_concurrency=int(c),
                                              poll_interval=float(poll), max_poll_interval=float(max_poll)))
        counts = dict(client.request_counts)
        gate = getattr(client.backend, "gate", None)
        limited = getattr(gate, "limited", None)
        refused = getattr(gate, "concurrency_refusals", None)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(json.dumps({"done": r.done, "failed": r.failed, "wall": wall, "cpu": cpu, "requests": counts,
                      "rate_limited_seen": limited, "concurrency_refusals_seen": refused}))
asyncio.run(main())
"""


#: ``--stores process``: the engine's account on a store in its own memory (no round trip to a
#: shared store, the same pacing as the ``local`` store): what the account costs without the store.
IN_PROCESS = """
import os
import vance_provider.core.client as _client
from vance_provider.core.account import Account, MemoryStore, account_id
def _in_process(base_url, token, store, max_jobs):
    return Account(account_id(base_url, token), MemoryStore(), max_jobs=max_jobs, default_rate=_client.UNKNOWN_RATE)
_client.shared_account = _in_process
"""


class Sim:
    """The simulator in its own process (its CPU apart from the client's), time-scaled."""

    def __init__(self, scale: float, spread: float, seed: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        knobs = {
            "queue": QUEUE,
            "job": MIXED_JOB if MIXED and MEDIA == "image" else JOB,
            "per_megapixel": PER_MEGAPIXEL if MIXED and MEDIA == "image" else 0.0,
            "spread": spread,
            "slots": SLOTS,
            "video_per_second": VIDEO_PER_SECOND,
            "limit": LIMIT,
            "window": WINDOW,
            "scale": scale,
            "seed": seed,
            "port": self.port,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SIM, json.dumps(knobs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"

    def admin(self, what: str) -> Any:
        return httpx.get(f"{self.url}/_sim/{what}", timeout=120).json()

    def __enter__(self) -> Sim:
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(20)


def job_of(request: dict[str, Any], upload_job: dict[str, str]) -> str | None:
    """The job a logged request was for: the one it created or was about, or (web API) the job
    made from the upload it made."""
    job = request.get("created_job") or request.get("job")
    if job:
        return str(job)
    if request.get("upload"):
        return upload_job.get(str(request["upload"]))
    return None


def is_storage(request: dict[str, Any]) -> bool:
    return str(request["path"]).startswith("/storage/")


def is_poll(request: dict[str, Any]) -> bool:
    path = str(request["path"])
    if path == "/web_api/v1/progress":
        return True
    return request["method"] == "GET" and path.startswith("/api/v1/jobs/") and path.count("/") == 4


def window_end(at: float) -> float:
    return math.floor(at / WINDOW) * WINDOW + WINDOW


def windowed_rate_bound(t0: float, requests: int) -> float:
    """The least time from ``t0`` (the first request) until the ``requests``-th can go, in windows
    aligned as the simulator aligns them: the first ends at the next multiple of the window and has
    a whole budget."""
    windows = math.ceil(requests / LIMIT)
    if windows <= 1:
        return 0.0
    return window_end(t0) - t0 + (windows - 2) * WINDOW


def slots_only(times: list[float]) -> float:
    """The least span the account's slots allow: each job (its time as drawn, in the order jobs
    started: the simulator draws the spread in that order, whatever the client) starts as soon as a
    slot is free. With the order fixed, starting any job later only ends the batch later."""
    free = [0.0] * SLOTS
    end = 0.0
    for t in times:
        start = heapq.heappop(free)
        heapq.heappush(free, start + t)
        end = max(end, start + t)
    return end


def ideal(t0: float, times: list[float], calls: tuple[int, int]) -> float:
    """An omniscient client on the simulator's windows: creations first (a slot and the budget
    allowing), each job looked at once at its end (or when the budget allows), then its download
    (web API: its upload goes just before its creation, from the same budget). Returns the span from
    ``t0`` to the last request."""
    budget_left, window_at = LIMIT, window_end(t0) - WINDOW
    now, slots_free, pending = t0, SLOTS, list(times)
    ends: list[float] = []  # heap of job ends (slots come back)
    looks: list[float] = []  # heap of when a finished job may be looked at
    create_cost, look_cost = calls  # before its end (its creation, an upload), after (a look, a download)
    last = t0
    pending.reverse()
    while pending or looks or ends:
        if now >= window_at + WINDOW:  # a new window: a whole budget
            window_at, budget_left = math.floor(now / WINDOW) * WINDOW, LIMIT
        while ends and ends[0] <= now:
            heapq.heappush(looks, heapq.heappop(ends))
            slots_free += 1
        # creations first: a slot and the creation's own requests (web, video: upload + creation)
        while pending and slots_free and budget_left >= create_cost:
            budget_left -= create_cost
            slots_free -= 1
            heapq.heappush(ends, now + pending.pop())
            last = now
        while looks and looks[0] <= now and budget_left >= look_cost:
            heapq.heappop(looks)
            budget_left -= look_cost
            last = now
        # the next event: a job's end, a look due, or the next window
        nxt = [window_at + WINDOW]
        if ends:
            nxt.append(ends[0])
        if looks and budget_left >= look_cost:
            nxt.append(max(now, looks[0]))
        now = max(now + 1e-9, min(nxt)) if min(nxt) <= now else min(nxt)
    return last - t0


def look_trace(
    jobs: list[dict[str, Any]],
    polls_by_job: dict[str, list[float]],
    steady: set[str],
    per_job_polls: dict[str, int],
) -> dict[str, Any]:
    """How the steady jobs were looked at: polls per job (a histogram), the share whose first look
    came before their end, and where such a look found them (the share of their processing done,
    as the service's clock says: quartiles)."""
    histogram = Counter(per_job_polls[j] for j in steady)
    missed: list[float] = []
    for j in jobs:
        polls = polls_by_job.get(j["id"])
        if j["id"] not in steady or not polls or j["finished_at"] is None or polls[0] >= j["finished_at"]:
            continue
        run = max(1e-9, j["finish_at"] - j["started_at"])
        missed.append(max(0.0, (polls[0] - j["started_at"]) / run))
    missed.sort()
    quartiles = [round(missed[int(q * (len(missed) - 1))], 2) for q in (0.25, 0.5, 0.75)] if missed else []
    return {
        "polls_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "first_look_missed_share": round(len(missed) / max(1, len(steady)), 3),
        "missed_at_done_share_quartiles": quartiles,
    }


def analyse(
    api: str,
    n: int,
    engine: dict[str, Any],
    log: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
    scale: float,
) -> dict[str, Any]:
    log = [r for r in log if not str(r["path"]).startswith("/_sim")]
    upload_job = {
        str(r["upload"]): str(r["created_job"]) for r in log if r.get("upload") and r.get("created_job")
    }
    api_requests = [r for r in log if not is_storage(r)]
    t0, t_end = log[0]["at"], log[-1]["at"]
    statuses = Counter(r["status"] for r in api_requests)
    created = sorted((r["at"], r["created_job"]) for r in log if r.get("created_job"))
    middle = created[len(created) // 10 : 9 * len(created) // 10] or created
    first_reset = window_end(t0)
    steady = {job for at, job in middle if at >= first_reset} or {job for _, job in middle}
    per_job_api: dict[str, int] = defaultdict(int)
    per_job_polls: dict[str, int] = defaultdict(int)
    per_job_http: dict[str, int] = defaultdict(int)
    for r in log:
        job = job_of(r, upload_job)
        if job is None:
            continue
        per_job_http[job] += 1
        if not is_storage(r):
            per_job_api[job] += 1
        if is_poll(r):
            per_job_polls[job] += 1
    mine = [j for j in jobs if j["api"] == api and j["finish_at"]]
    by_start = sorted(mine, key=lambda j: j["started_at"])
    times = [QUEUE + (j["finish_at"] - j["started_at"]) for j in by_start]
    # When each job was seen done: its first poll after it finished (the service's clock).
    polls_by_job: dict[str, list[float]] = defaultdict(list)
    for r in log:
        if is_poll(r) and r["status"] == 200 and job_of(r, upload_job):
            polls_by_job[str(job_of(r, upload_job))].append(r["at"])
    lags = []
    for j in mine:
        after = [at for at in polls_by_job.get(j["id"], []) if at >= (j["finished_at"] or math.inf)]
        if after:
            lags.append(min(after) - j["finished_at"])
    looks = look_trace(mine, polls_by_job, steady, per_job_polls)
    need = min_requests(api) * n
    rate_bound = windowed_rate_bound(t0, need)
    slot_bound = slots_only(times)
    bound = max(rate_bound, slot_bound)
    makespan = engine["wall"] * scale
    span = t_end - t0
    return {
        "N": n,
        "done": engine["done"],
        "failed": engine["failed"],
        "makespan_s": round(makespan, 1),
        "service_span_s": round(span, 1),
        "bound_s": round(bound, 1),
        "vs_bound": round(makespan / bound, 2) if bound else None,
        "span_vs_bound": round(span / bound, 2) if bound else None,
        "bound_parts_s": {"rate_windowed": round(rate_bound, 1), "slots": round(slot_bound, 1)},
        "ideal_s": round(ideal(t0, times, MIN_CALLS[(api, MEDIA)]), 1),
        "plain_2N_over_R_s": round(min_requests(api) * n / (LIMIT / WINDOW), 1),
        "first_window_s": round(window_end(t0) - t0, 1),
        "api_requests_per_job": round(len(api_requests) / n, 2),
        "http_requests_per_job": round(len(log) / n, 2),
        "steady_api_requests_per_job": round(sum(per_job_api[j] for j in steady) / len(steady), 2),
        "steady_http_requests_per_job": round(sum(per_job_http[j] for j in steady) / len(steady), 2),
        "polls_per_job": round(sum(per_job_polls.values()) / n, 2),
        "steady_polls_per_job": round(sum(per_job_polls[j] for j in steady) / len(steady), 2),
        "steady_jobs": len(steady),
        "http_429": statuses.get(429, 0),
        "http_429_on_creation": sum(
            1
            for r in api_requests
            if r["status"] == 429
            and r.get("created_job") is None
            and r["method"] == "POST"
            and r["path"] in ("/api/v1/jobs", "/web_api/v1/transform", "/web_api/v1/upload")
        ),
        "rate_limited_seen_by_engine": engine.get("rate_limited_seen"),
        "concurrency_refusals_seen_by_engine": engine.get("concurrency_refusals_seen"),
        "requests_time_at_rate_s": round(windowed_rate_bound(t0, len(api_requests)), 1),
        "mean_job_s": round(sum(times) / len(times), 1) if times else None,
        "detection_lag_mean_s": round(sum(lags) / len(lags), 1) if lags else None,
        "detection_lag_max_s": round(max(lags), 1) if lags else None,
        "looks": looks,
        "engine_requests": engine["requests"],
        "client_cpu_s": round(engine["cpu"], 2),
        "client_cpu_share_of_wall": round(engine["cpu"] / engine["wall"], 2),
        "client_cpu_ms_per_job": round(engine["cpu"] * 1000 / max(1, engine["done"]), 2),
    }


def run_one(
    api: str,
    n: int,
    scale: float,
    spread: float,
    seed: int,
    src: Path,
    tmp: Path,
    engine: Path = ROOT,
    store: str | None = None,
) -> dict[str, Any]:
    token = DEMO_OPEN_KEY if api == "open" else DEMO_WEB_TOKEN
    env = {**os.environ, "PYTHONPATH": str(engine)}
    script = ENGINE
    if store == "process":
        script, store = IN_PROCESS + ENGINE, "local"
    if store is not None:
        state = Path(tempfile.mkdtemp(prefix="state-", dir=tmp))  # a fresh local store each run
        env.update(VANCE_ACCOUNT_STORE=store, VANCE_STATE_DIR=str(state))
    with Sim(scale, spread, seed) as sim:
        dst = Path(tempfile.mkdtemp(prefix=f"out-{api}-{n}-", dir=tmp))
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                sim.url,
                token,
                str(src),
                str(dst),
                str(SLOTS),
                str(GUIDANCE / scale),
                str(15.0 / scale),
                tool()[0],
                json.dumps(tool()[1]),
            ],
            env=env,
            capture_output=True,
            text=True,
            cwd=engine,
            check=False,
        )
        if out.returncode:
            raise RuntimeError(f"the engine failed ({api}, N={n}):\n{out.stderr[-3000:]}")
        engine_out = json.loads(out.stdout.strip().splitlines()[-1])
        return analyse(api, n, engine_out, sim.admin("requests"), sim.admin("jobs"), scale)


def tool() -> tuple[str, dict[str, Any]]:
    """The tool the batch runs, and its config."""
    return ("sharpen", {}) if MIXED and MEDIA == "image" else TOOLS[MEDIA]


def make_mixed_photos(folder: Path, n: int) -> None:
    """``n`` flat JPEGs of the ``MIXED_PHOTOS`` sizes in turn (small files; the pixels count)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = MIXED_PHOTOS[i % len(MIXED_PHOTOS)]
        Image.new("RGB", size, (i % 256, (i * 7) % 256, 90)).save(folder / f"img{i:05d}.jpg", quality=50)


def make_clips(folder: Path, n: int) -> None:
    """``n`` small H.264 clips of ``CLIP_SECONDS`` (``--mixed``: of ``MIXED_CLIPS`` in turn; the
    simulator's job time counts their duration, not their pixels)."""
    import av
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        seconds = MIXED_CLIPS[i % len(MIXED_CLIPS)] if MIXED else CLIP_SECONDS
        with av.open(str(folder / f"clip{i:05d}.mp4"), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=5)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for k in range(int(seconds * 5)):
                frame = np.full((48, 64, 3), (i * 7 + k * 13) % 256, dtype=np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def engine_tree(root: Path = ROOT) -> str:
    """The commit the engine ran at, and whether its working tree had changes (the engine runs as
    it is in this checkout, uncommitted edits included)."""
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--short", "vance_provider/core"], capture_output=True, text=True
    ).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return head.stdout.strip() + (f" + uncommitted: {', '.join(changed)}" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=60.0, help="the simulator's time scale")
    parser.add_argument("--sizes", default="30,300,3000")
    parser.add_argument("--apis", default="open,web")
    parser.add_argument("--spread", type=float, default=0.3, help="log-normal sigma of job times")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument(
        "--slots",
        type=int,
        help="jobs in flight (the account's cap; default 16 images, the slots bind; 4 videos)",
    )
    parser.add_argument("--media", choices=["image", "video"], default="image", help="video: Open API only")
    parser.add_argument(
        "--mixed", action="store_true", help="inputs of several sizes (megapixels, or a video's seconds)"
    )
    parser.add_argument("--out", default=str(RESULTS / "field.json"))
    parser.add_argument("--stores", help="account stores to run side by side, e.g. local,none")
    parser.add_argument(
        "--baseline", metavar="LABEL=PATH", action="append", help="also run the engine of the checkout PATH"
    )
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    globals()["MEDIA"] = args.media  # the module's bound and schedule read these
    globals()["MIXED"] = args.mixed
    globals()["SLOTS"] = args.slots or (VIDEO_SLOTS if args.media == "video" else SLOTS)
    if args.media == "video" and args.apis != "open":
        parser.error("--media video runs on the Open API only: --apis open")
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {
        "params": {
            "scale": args.scale,
            "window_s": WINDOW,
            "requests_per_window": LIMIT,
            "slots": SLOTS,
            "queue_s": QUEUE,
            "job_s": JOB,
            "spread_sigma": args.spread,
            "seed": args.seed,
            "poll_interval_s": GUIDANCE,
            "engine_poll_interval_wall_s": round(GUIDANCE / args.scale, 4),
            "media": args.media,
            "mixed": args.mixed,
            "tool": tool()[0],
            "inputs": inputs_text(args.media),
            "web_rate_limit": "60 per 60 s, as a gateway would (the web API documents none)",
        },
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f} at start",
        "git": engine_tree(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make = make_mixed_photos if args.mixed else make_images
        (make_clips if args.media == "video" else make)(src, max(sizes))
        folders = {}
        for n in sizes:
            folders[n] = Path(tmp) / f"src-{n}"
            folders[n].mkdir()
            for f in sorted(src.glob("*.mp4" if args.media == "video" else "*.jpg"))[:n]:
                os.link(f, folders[n] / f.name)
        if args.stores or args.baseline:
            compare(args, sizes, folders, Path(tmp), result)
        else:
            for api in args.apis.split(","):
                result[api] = {}
                for n in sizes:
                    t = time.perf_counter()
                    row = run_one(api, n, args.scale, args.spread, args.seed, folders[n], Path(tmp))
                    row["wall_s"] = round(time.perf_counter() - t, 1)
                    result[api][str(n)] = row
                    shown = {k: v for k, v in row.items() if k != "engine_requests"}
                    print(api, n, json.dumps(shown), flush=True)
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def inputs_text(media: str) -> str:
    if media == "image" and MIXED:
        return (
            f"flat JPEGs of {', '.join(f'{w}x{h}' for w, h in MIXED_PHOTOS)} in turn; jobs of "
            f"{MIXED_JOB:g} s plus {PER_MEGAPIXEL:g} s a megapixel (the queueing's {QUEUE:g} s before)"
        )
    if media == "image":
        return "32x24 JPEG thumbnails (the job time is the profile's, not the pixels')"
    clips = "/".join(f"{c:g}" for c in MIXED_CLIPS) if MIXED else f"{CLIP_SECONDS:g}"
    return (
        f"64x48 H.264 clips of {clips} s; {VIDEO_PER_SECOND:g} s of processing a second of video, "
        "after the job's own time"
    )


def compare(
    args: argparse.Namespace, sizes: list[int], folders: dict[int, Path], tmp: Path, result: dict[str, Any]
) -> None:
    """Each size with each (engine, store), interleaved, ``--repeat`` times: the same load for all."""
    stores = (args.stores or "local").split(",")
    engines = [("this", ROOT)]
    for baseline in reversed(args.baseline or []):
        label, _, path = baseline.partition("=")
        engines.insert(0, (label, Path(path).resolve()))
    result["engines"] = {label: engine_tree(path) for label, path in engines}
    runs: list[dict[str, Any]] = []
    summary: dict[str, dict[str, dict[str, list[float]]]] = {}
    for repeat in range(args.repeat):
        for api in args.apis.split(","):
            for n in sizes:
                for label, path in engines:
                    for store in stores:
                        if store in ("none", "process") and label != "this":
                            continue  # the baseline is measured on the store; none: the engines agree
                        load = os.getloadavg()[0]
                        t = time.perf_counter()
                        row = run_one(
                            api, n, args.scale, args.spread, args.seed, folders[n], tmp, path, store
                        )
                        row["wall_s"] = round(time.perf_counter() - t, 1)
                        row.update(engine=label, store=store, repeat=repeat, load_1m_start=round(load, 2))
                        row["load_1m_end"] = round(os.getloadavg()[0], 2)
                        runs.append(row)
                        summary.setdefault(api, {}).setdefault(str(n), {}).setdefault(
                            f"{label}/{store}", []
                        ).append(row["vs_bound"])
                        shown = {k: v for k, v in row.items() if k != "engine_requests"}
                        print(api, n, label, store, json.dumps(shown), flush=True)
    result["runs"] = runs
    result["summary"] = {
        api: {
            n: {k: {"vs_bound": v, "mean": round(sum(v) / len(v), 3)} for k, v in by.items()}
            for n, by in sizes_.items()
        }
        for api, sizes_ in summary.items()
    }


if __name__ == "__main__":
    main()
