"""Knobs of the VanceAI simulator: accounts, timing, limits and injected faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEMO_WEB_TOKEN = "demo0123456789abcdef0123456789ab"
DEMO_OPEN_KEY = "sk_live_demo0123456789abcdef0123456789"
DEMO_VISIONCRAFT_TOKEN = "vc-demo-0123456789abcdef0123456789"
DEMO_VISIONCRAFT_PREMIUM_TOKEN = "vc-premium-demo-0123456789abcdef01"


@dataclass
class Account:
    """One vendor account. It owns credits and may hold several tokens/keys."""

    name: str = "demo"
    credits: float = 1000.0
    web_tokens: list[str] = field(default_factory=lambda: [DEMO_WEB_TOKEN])
    open_keys: list[str] = field(default_factory=lambda: [DEMO_OPEN_KEY])
    revoked_keys: list[str] = field(default_factory=list)


@dataclass
class Faults:
    """Probabilities (0..1) of each injected fault, drawn from one seeded RNG.

    ``error``: a 500/503 (Open API) or an HTTP 200 + code 10010 / HTTP 503 (web API).
    ``drop``: the connection is closed after the headers, before the body is complete.
    ``slow``: the response is delayed by ``slow_seconds`` (past a short client timeout).
    ``truncate``: a result download is cut short (half the bytes).
    ``fail_job``: the job fails on the service side (``processing_failed`` / ``fatal``).
    ``rate_limit``: a 429 with ``Retry-After`` although the real budget is not spent.

    Hostile answers (not part of ``uniform``):
    ``garble``: a JSON answer of HTTP 200 (job creation, job status, credits, upload; both APIs)
    becomes an HTML page, truncated JSON or a JSON list (``garble_kind``; ``None``: drawn), on
    the endpoints named in ``garble_endpoints`` (``create_job``, ``get_job``, ``credits``,
    ``upload``; empty: all four). The request is processed all the same.
    ``drip``: a result download sends one byte every ``drip_interval`` seconds.
    ``oversize``: a result download goes on past the result, to ``oversize_bytes`` in all;
    ``Content-Length`` says so when ``oversize_announced``, else the answer is chunked.
    """

    error: float = 0.0
    drop: float = 0.0
    slow: float = 0.0
    truncate: float = 0.0
    fail_job: float = 0.0
    rate_limit: float = 0.0
    slow_seconds: float = 3.0
    seed: int = 0
    garble: float = 0.0
    garble_kind: str | None = None  # "html" | "truncated" | "list"
    garble_endpoints: tuple[str, ...] = ()
    drip: float = 0.0
    drip_interval: float = 5.0
    oversize: float = 0.0
    oversize_bytes: int = 300 * 1024 * 1024
    oversize_announced: bool = True

    @classmethod
    def uniform(cls, rate: float, seed: int = 0, slow_seconds: float = 3.0) -> Faults:
        """Spread a total fault ``rate`` evenly over every kind."""
        each = rate / 6
        return cls(each, each, each, each, each, each, slow_seconds=slow_seconds, seed=seed)


@dataclass
class SimConfig:
    """Every knob of the simulator. The defaults suit tests: fast, generous, fault-free."""

    accounts: list[Account] = field(default_factory=lambda: [Account()])
    # Timing. A job waits ``queue_delay`` then takes ``time_per_job`` plus
    # ``time_per_megapixel`` per input megapixel (``time_per_video_second`` for video).
    queue_delay: float = 0.05
    time_per_job: float = 0.1
    time_per_megapixel: float = 0.0
    time_per_video_second: float = 0.2
    # Spread of job times: each job's time is multiplied by a log-normal factor of mean 1 and
    # this sigma (0 = every job takes the same time; 1.0 = a long tail, the slowest of 16 jobs
    # about 4x the mean), drawn from its own RNG seeded by ``faults.seed``.
    time_spread: float = 0.0
    # Time scale: the simulator's clock runs ``time_scale`` times faster than the wall clock, so every
    # time on it shrinks together: job times, rate windows, Retry-After, TTLs, the scheduler's tick
    # and the web API's sync wait (faults' network delays, ``slow_seconds`` and ``drip_interval``,
    # stay in wall seconds). Every duration above is in the service's (simulated) seconds. What a
    # client is told is on the wall clock (Retry-After, X-RateLimit-Reset, created_at/finished_at,
    # expires_at; milliseconds when scaled), so a client sees a service ``time_scale`` times faster
    # in every respect; the request log, the ledger and the jobs keep the simulated clock. 60 runs
    # the documented profile (60 requests a minute, jobs of ~40 s) at 60 requests a second, 0.7 s jobs.
    time_scale: float = 1.0
    result_sync_window: float = 0.0  # Open API /result answers 202 for this long after success
    web_sync_wait: float = 0.0  # web transform answers "finish" if done within this
    # Limits
    # ``rate_limit`` requests per ``rate_window`` per key, in fixed windows aligned to the epoch
    # (0 = unlimited). A 429 rate_limited carries Retry-After and X-RateLimit-Limit/-Remaining/
    # -Reset; ``rate_headers="always"`` puts the X-RateLimit-* headers on every answer too,
    # "on_429" only on the 429 (all the documents promise). Times are whole seconds when the
    # window is (and the clock is not scaled), else milliseconds: a window of 0.05 s is a 1 s window
    # 20 times faster (``time_scale`` makes every time on the clock faster together).
    rate_limit: int = 0
    rate_window: float = 1.0
    rate_headers: Literal["always", "on_429"] = "always"
    web_rate_limit: bool = False  # apply the rate limit to the web API too (HTTP 429, same headers)
    max_concurrent_images: int = 16  # per account, in flight (queued + processing)
    max_concurrent_videos: int = 4
    upload_ttl: float = 24 * 3600.0
    idempotency_ttl: float = 24 * 3600.0
    signed_url_ttl: float = 3600.0
    web_max_bytes: int = 10 * 1024 * 1024
    web_max_megapixels: float = 34.0
    open_max_image_bytes: int = 200 * 1024 * 1024
    open_max_upload_bytes: int = 5261334937
    # Safety switches that tests flip on
    allow_loopback_urls: bool = False  # image_url/source_url may point at 127.0.0.1
    allow_http_webhooks: bool = False  # web API webhooks may be http:// (loopback only)
    webhook_retry_delay: float = 0.2
    web_missing_token_code: int = 30001  # one edition says 30001, the other 10001
    web_point_get_only: bool = False  # `point` as documented strictly: GET only (POST -> 405)
    # How a GET-only `point` refuses a POST: "405", or as this API reports errors, HTTP 200 with
    # "illegal_parameter" (code 10001) or "missing_token" (it read only the query string).
    web_point_post_answer: str = "405"
    web_error_content_type: str | None = None  # web API errors served as e.g. "text/html"
    result_content_type: str | None = None  # results labelled with this type, whatever they are
    presign_content_type: bool = True  # the presigned PUT signs the upload's content type
    poll_retry_after: int = 0  # Retry-After (s) on answers about a running job; 0 = none
    faults: Faults = field(default_factory=Faults)
    tick: float = 0.02  # how often the scheduler advances jobs
    admin_routes: bool = False  # /_sim/* introspection over HTTP (off by default)
    # VisionCraft (served at the host's root, the key in the JSON body). Free keys may use the
    # free models; premium keys everything. A key whose Telegram account left the channel is
    # refused (403) until it is taken off ``visioncraft_unsubscribed``.
    visioncraft_tokens: list[str] = field(default_factory=lambda: [DEMO_VISIONCRAFT_TOKEN])
    visioncraft_premium_tokens: list[str] = field(default_factory=lambda: [DEMO_VISIONCRAFT_PREMIUM_TOKEN])
    visioncraft_unsubscribed: list[str] = field(default_factory=list)
    visioncraft_rate_limit: int = 0  # generation requests per ``rate_window`` per key; 0 = unlimited
