"""``vance-sim serve``: run the VanceAI simulator from the command line."""

from __future__ import annotations

import argparse

from .config import DEMO_OPEN_KEY, DEMO_WEB_TOKEN, Account, Faults, SimConfig
from .server import SimulatorServer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vance-sim", description="A local VanceAI simulator (web API v1 + Open API v1)."
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve both APIs on a loopback port")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--credits", type=float, default=1000.0, help="starting credits of the demo account")
    s.add_argument("--web-token", default=DEMO_WEB_TOKEN, help="web API v1 api_token accepted")
    s.add_argument("--open-key", default=DEMO_OPEN_KEY, help="Open API v1 sk_live_ key accepted")
    s.add_argument("--queue-delay", type=float, default=0.05, help="seconds a job waits before processing")
    s.add_argument("--time-per-job", type=float, default=0.1, help="seconds of processing per job")
    s.add_argument("--time-per-megapixel", type=float, default=0.0)
    s.add_argument("--time-per-video-second", type=float, default=0.2)
    s.add_argument("--rate-limit", type=int, default=0, help="requests per --rate-window per key (0: off)")
    s.add_argument("--rate-window", type=float, default=1.0)
    s.add_argument("--max-concurrent-images", type=int, default=16)
    s.add_argument("--max-concurrent-videos", type=int, default=4)
    s.add_argument("--result-sync-window", type=float, default=0.0)
    s.add_argument("--fault-rate", type=float, default=0.0, help="total probability of an injected fault")
    s.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    s.add_argument(
        "--allow-loopback-urls", action="store_true", help="let image_url/source_url reach loopback"
    )
    s.add_argument("--allow-http-webhooks", action="store_true", help="allow http:// webhooks on loopback")
    s.add_argument("--admin-routes", action="store_true", help="serve /_sim/ledger and /_sim/requests")
    return p


def config_from_args(a: argparse.Namespace) -> SimConfig:
    return SimConfig(
        accounts=[Account(credits=a.credits, web_tokens=[a.web_token], open_keys=[a.open_key])],
        queue_delay=a.queue_delay,
        time_per_job=a.time_per_job,
        time_per_megapixel=a.time_per_megapixel,
        time_per_video_second=a.time_per_video_second,
        rate_limit=a.rate_limit,
        rate_window=a.rate_window,
        max_concurrent_images=a.max_concurrent_images,
        max_concurrent_videos=a.max_concurrent_videos,
        result_sync_window=a.result_sync_window,
        faults=Faults.uniform(a.fault_rate, seed=a.seed),
        allow_loopback_urls=a.allow_loopback_urls,
        allow_http_webhooks=a.allow_http_webhooks,
        admin_routes=a.admin_routes,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    server = SimulatorServer(config_from_args(args), host=args.host, port=args.port)
    print(f"VanceAI simulator on {server.base_url}  (web API: {server.web_url}, Open API: {server.open_url})")
    print("Tokens: the web API token and Open API key given with --web-token / --open-key (demo defaults).")
    server.serve_forever()


if __name__ == "__main__":
    main()
