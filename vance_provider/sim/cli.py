"""``vance-sim serve``: run the VanceAI simulator from the command line."""

from __future__ import annotations

import argparse
import dataclasses

from .config import DEMO_OPEN_KEY, DEMO_VISIONCRAFT_TOKEN, DEMO_WEB_TOKEN, Account, Faults, SimConfig
from .server import SimulatorServer


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in ``--help`` (but for off switches); descriptions keep their lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vance-sim",
        description="A local VanceAI simulator (web API v1 + Open API v1 + VisionCraft).",
        formatter_class=_Formatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "serve",
        help="serve the APIs on a loopback port",
        description="Serve the VanceAI APIs on a loopback port, with one demo account.\n\n"
        "  vance-sim serve &\n"
        f"  export VANCE_BASE_URL=http://127.0.0.1:8765 VANCE_API_TOKEN={DEMO_OPEN_KEY}\n"
        "  vance credits\n\n"
        f"The demo tokens: Open API v1 {DEMO_OPEN_KEY}, web API v1 {DEMO_WEB_TOKEN}.",
        formatter_class=_Formatter,
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    s.add_argument("--credits", type=float, default=1000.0, help="starting credits of the demo account")
    s.add_argument("--web-token", default=DEMO_WEB_TOKEN, help="web API v1 api_token accepted")
    s.add_argument("--open-key", default=DEMO_OPEN_KEY, help="Open API v1 sk_live_ key accepted")
    s.add_argument("--queue-delay", type=float, default=0.05, help="seconds a job waits before processing")
    s.add_argument("--time-per-job", type=float, default=0.1, help="seconds of processing per job")
    s.add_argument(
        "--time-per-megapixel", type=float, default=0.0, help="extra seconds of processing per megapixel"
    )
    s.add_argument(
        "--time-per-video-second", type=float, default=0.2, help="seconds of processing per second of video"
    )
    s.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="run the service's clock this many times faster than the wall clock: job times, rate "
        "windows, Retry-After and TTLs shrink together (the other times are the service's seconds; "
        "60: the documented 60 requests a minute and ~40 s jobs in a minute or two of wall time)",
    )
    s.add_argument("--time-spread", type=float, default=0.0, help="log-normal sigma of job times (0: none)")
    s.add_argument("--rate-limit", type=int, default=0, help="requests per --rate-window per key (0: off)")
    s.add_argument("--rate-window", type=float, default=1.0, help="seconds of a --rate-limit window")
    s.add_argument("--max-concurrent-images", type=int, default=16, help="image jobs in flight per account")
    s.add_argument("--max-concurrent-videos", type=int, default=4, help="video jobs in flight per account")
    s.add_argument(
        "--result-sync-window",
        type=float,
        default=0.0,
        help="seconds the Open API's result is not yet downloadable after success",
    )
    s.add_argument("--fault-rate", type=float, default=0.0, help="total probability of an injected fault")
    s.add_argument("--seed", type=int, default=0, help="seed of the fault injection")
    s.add_argument(
        "--allow-loopback-urls", action="store_true", help="let image_url/source_url reach loopback"
    )
    s.add_argument("--allow-http-webhooks", action="store_true", help="allow http:// webhooks on loopback")
    s.add_argument("--admin-routes", action="store_true", help="serve /_sim/ledger and /_sim/requests")
    return p


def config_from_args(a: argparse.Namespace) -> SimConfig:
    """The flags named after a setting (``--queue-delay`` -> ``queue_delay``) pass as they are;
    the account and the faults are built from theirs."""
    settings = {f.name: getattr(a, f.name) for f in dataclasses.fields(SimConfig) if hasattr(a, f.name)}
    return SimConfig(
        accounts=[Account(credits=a.credits, web_tokens=[a.web_token], open_keys=[a.open_key])],
        faults=Faults.uniform(a.fault_rate, seed=a.seed),
        **settings,
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.time_scale > 0:
        parser.error("--time-scale must be above 0")
    server = SimulatorServer(config_from_args(args), host=args.host, port=args.port)
    print(banner(server, args), flush=True)
    server.serve_forever()


def _shown(token: str, demo: str, flag: str) -> str:
    """A demo token in full (it is public); one given with a flag is the user's, and stays unprinted."""
    return token if token == demo else f"(the one given with {flag})"


def banner(server: SimulatorServer, args: argparse.Namespace) -> str:
    """What a newcomer needs: where it listens, and which tokens it accepts."""
    open_key = _shown(args.open_key, DEMO_OPEN_KEY, "--open-key")
    web_token = _shown(args.web_token, DEMO_WEB_TOKEN, "--web-token")
    rows = [
        ("Open API v1", server.open_url, "key", open_key),
        ("web API v1", server.web_url, "token", web_token),
        ("VisionCraft", server.base_url, "token", DEMO_VISIONCRAFT_TOKEN),
    ]
    width = max(len(url) for _, url, _, _ in rows)
    scale = getattr(args, "time_scale", 1.0)
    clock = [f"Time runs {scale:g}x faster than the wall clock (--time-scale)."] if scale != 1 else []
    export_token = args.open_key if args.open_key == DEMO_OPEN_KEY else "<your --open-key>"
    return "\n".join(
        [
            f"VanceAI simulator on {server.base_url}  ({args.credits:g} credits; Ctrl-C stops it)",
            *(f"  {api:<12} {url:<{width}}  {kind + ':':<6} {token}" for api, url, kind, token in rows),
            "Use it with:",
            f"  export VANCE_BASE_URL={server.base_url}",
            f"  export VANCE_API_TOKEN={export_token}   # or the web API token",
            *clock,
        ]
    )


if __name__ == "__main__":
    main()
