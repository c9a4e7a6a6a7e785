"""``vance-sim serve``: argument parsing, and a real server process on a loopback port."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN
from tests.sim.helpers import bearer, free_port
from vance_provider.sim.cli import build_parser, config_from_args


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.command, args.host, args.port) == ("serve", "127.0.0.1", 8765)
    assert (args.web_token, args.open_key, args.credits) == (WEB_TOKEN, OPEN_KEY, 1000.0)
    assert (args.fault_rate, args.rate_limit, args.allow_loopback_urls, args.admin_routes) == (
        0.0,
        0,
        False,
        False,
    )
    config = config_from_args(args)
    assert config.faults.error == config.faults.drop == 0.0
    assert not config.allow_http_webhooks


def test_parser_options_reach_the_config() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "9999",
            "--credits",
            "5.5",
            "--open-key",
            "sk_live_cli",
            "--web-token",
            "tok",
            "--rate-limit",
            "7",
            "--rate-window",
            "2",
            "--max-concurrent-images",
            "3",
            "--fault-rate",
            "0.6",
            "--seed",
            "42",
            "--allow-loopback-urls",
            "--allow-http-webhooks",
            "--result-sync-window",
            "1.5",
        ]
    )
    assert args.port == 9999
    config = config_from_args(args)
    [account] = config.accounts
    assert (account.credits, account.open_keys, account.web_tokens) == (5.5, ["sk_live_cli"], ["tok"])
    assert (config.rate_limit, config.rate_window, config.max_concurrent_images) == (7, 2.0, 3)
    assert config.faults.seed == 42
    kinds = ("error", "drop", "slow", "truncate", "fail_job", "rate_limit")
    assert [getattr(config.faults, k) for k in kinds] == pytest.approx([0.1] * 6)
    assert config.allow_loopback_urls and config.allow_http_webhooks
    assert config.result_sync_window == 1.5


@pytest.mark.parametrize("argv", [[], ["serve", "--port", "notanumber"], ["launch"]])
def test_parser_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_serve_subprocess_answers_credits() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vance_provider.sim.cli", "serve", "--port", str(port), "--credits", "12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/api/v1/credits", headers=bearer(), timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the simulator did not start"
                time.sleep(0.05)
        assert resp.status_code == 200
        assert resp.json() == {"balance": 12.0, "used": 0.0, "frozen": 0.0}
        wrong = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/credits", headers=bearer("sk_live_nope"), timeout=2
        )
        assert wrong.status_code == 401
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"127.0.0.1:{port}" in out
