"""Real-size media: 12 MP photos and 1080p videos, on local disk and on moto S3.

    python -m bench.media [--photos 16] [--videos 2] [--video-seconds 4] [--cases ...] [--s3-tls]
    python -m bench.media --baseline DIR --rounds 3 --key NAME   # a change, before and after

Inputs (made once, cached in ``--cache``): 16 photos of 4000x3000 with natural-looking content
(1/f^2.4 colour noise, the power spectrum of natural scenes, plus sensor grain), saved as JPEG
(quality 90, ~4-5 MB) and as PNG; and 1080p H.264 clips (PyAV, a texture panned under the camera with
grain, CRF 18). The engine runs as it is (``run_batch``, Open API, 16 in flight, tool ``sharpen``
for photos and ``video_hdr`` for videos: the outputs keep the input size), in its own process,
after a warm-up batch of two thumbnails on the same storage as the case (imports, the S3 client and
connections made before the measurement; ``warm_up_cpu`` is what that first batch cost).

Measured per case, in the engine's process, for the measured batch alone:

- **client CPU per photo**: process CPU time (user + system, every thread), not wall time.
- **input bytes read / input size**: local disk: the bytes the process read from files
  (``/proc/self/io`` rchar; a socket's bytes are not counted there) and the opens of input files
  (an audit hook); on S3: the bytes moto's server sent for GETs of the input keys, and their count
  (moto runs in its own process behind a counting WSGI wrapper).
- **peak RSS** of the engine's process (VmHWM) with 16 photos (or the videos) in flight.

moto's S3 server runs in its own process under uvicorn, which keeps connections open as S3 does
(moto's own werkzeug server closes each one: every request paid a new connection); ``--s3-tls``
serves it over https with a self-signed certificate, as a real S3 user connects (botocore signs
no payload there and sends checksums as trailers; over http it hashes every body it sends).

The simulator runs in its own process (no rate limit, 0.1 s jobs: this bench is about the client's
work on real media, not about time). It renders each result (a 12 MP decode and encode, two at a
time) before the job is done, so on a loaded machine jobs take seconds and are polled several
times: the polls are in the CPU figure, and their count is in ``requests``.

With ``--baseline DIR`` (a copy of the code before a change: ``git archive REV | tar -x -C DIR``
or a worktree), each case runs with that tree's engine and with this one, back to back, the
first side alternating from round to round, on the same simulator and inputs; every run records
the load averages at its start, and ``summary`` gives per case and side the CPU of every run, its
min and median. The runs are written under ``--key`` in ``--out``, beside what the file holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.run import free_port, make_images

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

SIM = """
import gc, sys
gc.disable()
from vance_provider.sim import Account, SimConfig, SimulatorServer
cfg = SimConfig(accounts=[Account(credits=1e9)], queue_delay=0.0, time_per_job=0.1, time_per_video_second=0.0,
                max_concurrent_images=16, max_concurrent_videos=4, admin_routes=True)
with SimulatorServer(cfg, port=int(sys.argv[1])):
    print("ready", flush=True)
    sys.stdin.read()
"""
# moto's S3 server, behind a WSGI wrapper that counts what GETs of object keys sent, under uvicorn
# (connections kept open, as S3 keeps them; werkzeug's server closes each one); argv: port, and
# optionally a certificate and its key (https).
MOTO = """
import json, sys, threading
import uvicorn
from collections import Counter
from moto.server import DomainDispatcherApplication, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
sent, gets, requests, lock = Counter(), Counter(), Counter(), threading.Lock()
def kind(environ):
    # What a request is about: an input, an output, the engine's own files, or a listing.
    path, query = environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
    name = path.rsplit("/", 1)[-1]
    what = ("warm-up" if "/warm" in path else "listing" if path.count("/") < 2 or not name
            else "engine file" if name.startswith(("_vance", ".vance-"))
            else "input" if "/in-" in path else "output" if "/out-" in path else "other")
    return f"{environ['REQUEST_METHOD']} {what}" + (" (ranged)" if environ.get("HTTP_RANGE") else "") + (
        f" ?{query.split('=')[0]}" if query else "")
def counting(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/_bench/counts":
        start_response("200 OK", [("Content-Type", "application/json")])
        with lock:
            return [json.dumps({"bytes": sent, "gets": gets, "requests": requests}).encode()]
    if path == "/_bench/reset":
        with lock:
            sent.clear(); gets.clear(); requests.clear()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    with lock:
        requests[kind(environ)] += 1
    if not environ.get("CONTENT_LENGTH"):  # a chunked body (aws-chunked uploads over https)
        environ["wsgi.input_terminated"] = True
    body = app(environ, start_response)
    if environ["REQUEST_METHOD"] != "GET" or path.count("/") < 2:
        return body
    def counted():
        n = 0
        try:
            for chunk in body:
                n += len(chunk)
                yield chunk
        finally:
            with lock:
                sent[path] += n; gets[path] += 1
            if hasattr(body, "close"):
                body.close()
    return counted()
tls = {"ssl_certfile": sys.argv[2], "ssl_keyfile": sys.argv[3]} if len(sys.argv) > 3 else {}
config = uvicorn.Config(counting, host="127.0.0.1", port=int(sys.argv[1]), interface="wsgi",
                        log_level="warning", timeout_keep_alive=60, timeout_graceful_shutdown=1, **tls)
server = uvicorn.Server(config)
def ready():
    while not server.started:
        threading.Event().wait(0.05)
    print("ready", flush=True)
threading.Thread(target=ready, daemon=True).start()
server.run()
"""
ENGINE = """
import asyncio, json, os, sys, time
from vance_provider.core import AsyncVanceClient, BatchSpec, run_batch
url, token, warm_src, warm_dst, src, dst, tool, options = sys.argv[1:9]
options = json.loads(options) or None
opens = []
prefix = src.split("://", 1)[-1]
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and prefix in args[0] and "r" in str(args[1] or "r"):
        opens.append(args[0])
sys.addaudithook(hook)
def io_read():
    return int(next(l for l in open("/proc/self/io") if l.startswith("rchar")).split()[1])
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
async def main():
    async with AsyncVanceClient(token, base_url=url) as client:
        warm_options = options if warm_src.startswith("s3://") else None
        c0 = time.process_time()
        await run_batch(client, BatchSpec(warm_src, warm_dst, "sharpen", max_concurrency=16, storage_options=warm_options))
        fixed = time.process_time() - c0
        r0, cpu0, t0 = io_read(), time.process_time(), time.perf_counter()
        r = await run_batch(client, BatchSpec(src, dst, tool, max_concurrency=16, storage_options=options))
        cpu, wall, read = time.process_time() - cpu0, time.perf_counter() - t0, io_read() - r0
        counts = dict(client.request_counts)
    print(json.dumps({"done": r.done, "failed": r.failed, "cpu": cpu, "warm_up_cpu": fixed, "wall": wall, "file_bytes_read": read,
                      "input_opens": len(opens), "peak_rss_kb": hwm(), "requests": counts}))
asyncio.run(main())
"""


class Proc:
    """A helper process that prints "ready" once it serves."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready"

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(20)


def photo(seed: int, width: int = 4000, height: int = 3000, beta: float = 2.4) -> Image.Image:
    """A natural-looking photo: colour noise with the 1/f^beta power spectrum of natural scenes
    (correlated channels, a tint) and a little sensor grain, so that JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2)
    shape = (height, width // 2 + 1)
    base = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    channels = []
    for _ in range(3):
        mix = 0.8 * base + 0.2 * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
        plane = np.fft.irfft2(mix * amp, s=(height, width))
        channels.append((plane - plane.mean()) / plane.std())
    rgb = rng.uniform(60, 190, 3) + 45 * np.stack(channels, -1) + rng.normal(0, 1.2, (height, width, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def self_signed(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, as files in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_file), str(key_file)


def make_photos(cache: Path, n: int) -> tuple[Path, Path]:
    jpg, png = cache / "photos-jpg", cache / "photos-png"
    jpg.mkdir(parents=True, exist_ok=True)
    png.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if (jpg / f"photo{i:02d}.jpg").exists() and (png / f"photo{i:02d}.png").exists():
            continue
        img = photo(1000 + i)
        img.save(jpg / f"photo{i:02d}.jpg", "JPEG", quality=90)
        img.save(png / f"photo{i:02d}.png", "PNG")
    return jpg, png


def make_videos(cache: Path, n: int, seconds: float, fps: int = 30) -> Path:
    """1080p H.264 clips: a 12 MP texture panned under the camera, with grain, CRF 18."""
    import av

    folder = cache / f"videos-{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"clip{i}.mp4"
        if path.exists():
            continue
        texture = np.asarray(photo(2000 + i, 3000, 1800))
        rng = np.random.default_rng(i)
        tmp = path.with_suffix(".part.mp4")
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
            stream.options = {"preset": "veryfast", "crf": "18"}
            frames = int(seconds * fps)
            for k in range(frames):
                x, y = int(k / frames * 1000), int(k / frames * 600)
                frame = texture[y : y + 1080, x : x + 1920].astype(np.int16)
                frame = np.clip(frame + rng.normal(0, 2.0, frame.shape), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        tmp.rename(path)
    return folder


def run_engine(
    sim_url: str,
    warm: str,
    src: str,
    dst: str,
    tool: str,
    options: dict[str, Any] | None,
    env: dict[str, str],
    tree: Path = ROOT,
) -> dict[str, Any]:
    """One batch by the engine of ``tree`` (this checkout, or a baseline's copy), in its own process."""
    from vance_provider.sim import DEMO_OPEN_KEY

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            ENGINE,
            sim_url,
            DEMO_OPEN_KEY,
            warm,
            f"{warm.rstrip('/')}-out-{time.time_ns()}/",
            src,
            dst,
            tool,
            json.dumps(options or {}),
        ],
        env={**os.environ, **env, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        cwd=tree,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"the engine failed on {src}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [f for f in folder.iterdir() if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def load() -> str:
    """The load averages over 1, 5 and 15 minutes, as ``uptime`` gives them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def git_rev(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() if out.returncode == 0 else tree.name


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case and side: client CPU per file (every run, min, median), the load at each run's
    start, bytes read over input size and peak RSS."""
    summary: dict[str, Any] = {}
    for run in runs:
        cell = summary.setdefault(run["case"], {}).setdefault(run["side"], {})
        for key, value in (
            ("client_cpu_ms_per_file", run["client_cpu_ms_per_file"]),
            ("load_1m", float(run["load"].split()[0])),
            ("input_read_ratio", run["input_read_ratio"]),
            ("peak_rss_mb", run["peak_rss_mb"]),
            ("get_job_per_file", round(run["requests"].get("get_job", 0) / max(1, run["done"]), 1)),
            ("warm_up_cpu_ms", round(run.get("warm_up_cpu", 0) * 1000)),
        ):
            cell.setdefault(key, []).append(value)
    for sides in summary.values():
        for cell in sides.values():
            cpu = sorted(cell["client_cpu_ms_per_file"])
            cell["cpu_min"] = cpu[0]
            cell["cpu_median"] = round(statistics.median(cpu), 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--video-seconds", type=float, default=4.0)
    parser.add_argument("--cases", default="local-jpg,local-png,s3-jpg,s3-png,local-video,s3-video")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vance-bench-media"))
    parser.add_argument("--out", default=str(RESULTS / "media.json"))
    parser.add_argument(
        "--baseline",
        help="a copy of the code before a change (a git worktree, or `git archive REV | tar -x -C DIR`): "
        "every case runs with its engine and with this checkout's, alternately, on the same simulator "
        "and inputs; the runs go under --key in --out, beside what is there",
    )
    parser.add_argument("--baseline-label", help="what the baseline is (default: its git revision)")
    parser.add_argument(
        "--s3-tls",
        action="store_true",
        help="serve moto's S3 over https (a self-signed certificate): what a user of real S3 pays",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each case (and side)")
    parser.add_argument("--key", default="compare", help="with --baseline: the key of the runs in --out")
    parser.add_argument("--note", default="", help="with --baseline: what the comparison is about")
    args = parser.parse_args()
    cache = Path(args.cache)
    t = time.perf_counter()
    cases = args.cases.split(",")
    jpg, png = make_photos(cache, args.photos)
    videos = make_videos(cache, args.videos, args.video_seconds) if "video" in args.cases else None
    print(f"inputs ready in {time.perf_counter() - t:.0f} s", flush=True)
    folders = {"jpg": jpg, "png": png, "video": videos}
    sides: list[tuple[str, Path]] = [("after", ROOT)]
    if args.baseline:
        sides.insert(0, ("before", Path(args.baseline).resolve()))
    result: dict[str, Any] = {
        "params": {
            "photos": args.photos,
            "photo_pixels": "4000x3000",
            "videos": args.videos,
            "video": f"1920x1080 H.264 CRF 18, {args.video_seconds:g} s at 30 fps",
            "max_concurrency": 16,
            "api": "open",
            "tools": {"photos": "sharpen", "videos": "video_hdr"},
        },
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f} at start",
        "git": git_rev(ROOT),
    }
    runs: list[dict[str, Any]] = []
    s3 = any(case.startswith("s3-") for case in cases)
    s3_port = free_port()
    certs = tempfile.TemporaryDirectory()
    tls = self_signed(Path(certs.name)) if s3 and args.s3_tls else None
    moto = Proc(MOTO, str(s3_port), *(tls or ()), env=S3_ENV) if s3 else None
    sim_port = free_port()
    sim = Proc(SIM, str(sim_port))
    endpoint = f"{'https' if tls else 'http'}://127.0.0.1:{s3_port}"
    client_kwargs: dict[str, Any] = {"endpoint_url": endpoint, **({"verify": tls[0]} if tls else {})}
    options = {"client_kwargs": client_kwargs, "key": "testing", "secret": "testing"}
    result["params"]["s3"] = f"moto under uvicorn (connections kept open), {'https' if tls else 'http'}"
    try:
        import httpx
        import s3fs

        os.environ.update(S3_ENV)
        bench_http = httpx.Client(verify=tls[0] if tls else True)
        fs = s3fs.S3FileSystem(**options) if s3 else None
        with tempfile.TemporaryDirectory() as tmp:
            warm = Path(tmp) / "warm"
            make_images(warm, 2)
            if fs is not None:  # the S3 cases warm up on S3: its client and connections are made then
                fs.mkdir("media")
                fs.put(str(warm) + "/", "s3://media/warm/", recursive=True)
            for n in range(args.rounds):
                # Each round runs both sides of a case back to back, the first side alternating,
                # so that a drift of the machine's load falls on both alike.
                for case in cases:
                    for side, tree in sides if n % 2 == 0 else sides[::-1]:
                        where, kind = case.split("-")
                        folder = folders[kind]
                        assert folder is not None
                        count, size = folder_bytes(folder)
                        tool = "video_hdr" if kind == "video" else "sharpen"
                        at, started_load = time.strftime("%H:%M:%S", time.gmtime()), load()
                        if where == "s3":
                            assert fs is not None
                            src, dst = f"s3://media/in-{kind}/", f"s3://media/out-{kind}-{time.time_ns()}/"
                            if not fs.exists(src):
                                fs.put(str(folder) + "/", src, recursive=True)
                            bench_http.get(f"{endpoint}/_bench/reset")
                            row = run_engine(
                                f"http://127.0.0.1:{sim_port}",
                                "s3://media/warm/",
                                src,
                                dst,
                                tool,
                                options,
                                S3_ENV,
                                tree,
                            )
                            counts = bench_http.get(f"{endpoint}/_bench/counts").json()
                            if sum(f["size"] for f in fs.find(dst, detail=True).values()) == 0:
                                raise RuntimeError(f"the outputs in {dst} are empty")
                            mine = [k for k in counts["bytes"] if f"/in-{kind}/" in k]
                            row["s3_input_bytes_sent"] = sum(counts["bytes"][k] for k in mine)
                            row["s3_input_gets"] = sum(counts["gets"][k] for k in mine)
                            row["input_read_ratio"] = round(row["s3_input_bytes_sent"] / size, 3)
                            # every request of the measured batch (the warm-up's left out)
                            row["s3_requests"] = {
                                k: v for k, v in sorted(counts["requests"].items()) if "warm-up" not in k
                            }
                        else:
                            dst = str(Path(tmp) / f"out-{case}-{time.time_ns()}")
                            row = run_engine(
                                f"http://127.0.0.1:{sim_port}",
                                str(warm),
                                str(folder),
                                dst,
                                tool,
                                None,
                                {},
                                tree,
                            )
                            row["input_read_ratio"] = round(row["file_bytes_read"] / size, 3)
                            row["note"] = (
                                "file_bytes_read: every file the process read during the batch (inputs, and any other file it read)"
                            )
                        row.update(
                            {
                                "files": count,
                                "input_mb": round(size / 1e6, 1),
                                "mean_input_mb": round(size / count / 1e6, 2),
                                "client_cpu_ms_per_file": round(row["cpu"] * 1000 / max(1, row["done"]), 1),
                                "peak_rss_mb": round(row["peak_rss_kb"] / 1024, 1),
                                "wall_s": round(row["wall"], 1),
                            }
                        )
                        runs.append(
                            {
                                "case": case,
                                "side": side,
                                "round": n + 1,
                                "at": at,
                                "load": started_load,
                                **row,
                            }
                        )
                        result[case] = row
                        print(side, case, f"load {started_load}", json.dumps(row), flush=True)
    finally:
        sim.close()
        if moto is not None:
            moto.proc.terminate()
            try:
                moto.proc.wait(20)
            except subprocess.TimeoutExpired:
                moto.proc.kill()
        certs.cleanup()
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        # Beside what the file holds: the runs of both sides, and per case their summary.
        kept = json.loads(out.read_text()) if out.exists() else {}
        kept[args.key] = {
            "what": args.note,
            "before": args.baseline_label or git_rev(Path(args.baseline)),
            "after": result["git"],
            "machine": f"{platform.machine()} {os.cpu_count()} cpu",
            "date": result["date"],
            "rounds": args.rounds,
            "load": "1, 5 and 15 minute load averages at the start of each run",
            "summary": summarize(runs),
            "runs": runs,
        }
        out.write_text(json.dumps(kept, indent=2) + "\n")
    else:
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
