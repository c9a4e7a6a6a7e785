"""The simulator's accounts, jobs, uploads, credits ledger and request log.

Everything the HTTP routes do goes through :class:`SimState`, under one lock, so
tests can read the ledger and the request log from another thread while the
server runs. Jobs advance on a clock (``queue_delay`` then processing time); a
scheduler tick starts and finishes them, so credits move even if nobody polls.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import Account, SimConfig

Api = Literal["web", "open"]
TERMINAL = {"succeeded", "failed", "canceled"}


class Clock:
    """The simulator's clock (epoch seconds): wall time plus an offset that tests may advance (to
    expire uploads, keys, URLs).

    With a time ``scale`` k, simulated time runs k times faster than the wall clock from ``origin``
    (the clock's creation, unless given): ``now() = origin + (wall() - origin) * k + offset``.
    Everything the service does is on this clock; what a client is told goes through
    :meth:`to_wall` (instants) and :meth:`wall_seconds` (durations), so a client sees a service k
    times faster. ``wall`` is the clock's source of wall time: a hook a test may freeze.
    """

    def __init__(
        self, scale: float = 1.0, *, origin: float | None = None, wall: Callable[[], float] = time.time
    ) -> None:
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"the time scale must be a number above 0, got {scale!r}")
        self.scale, self.wall, self.offset = float(scale), wall, 0.0
        self.origin = wall() if origin is None else origin

    @property
    def scaled(self) -> bool:
        return self.scale != 1.0

    def now(self) -> float:
        if not self.scaled:
            return self.wall() + self.offset
        return self.origin + (self.wall() - self.origin) * self.scale + self.offset

    def advance(self, seconds: float) -> None:
        """Move the simulated clock ``seconds`` (simulated seconds) on."""
        self.offset += seconds

    def to_wall(self, at: float) -> float:
        """A simulated instant on the wall clock, as a client is told it."""
        return at if not self.scaled else self.origin + (at - self.origin) / self.scale

    def wall_seconds(self, seconds: float) -> float:
        """A simulated duration in wall seconds (what a client waits, what the server sleeps)."""
        return seconds / self.scale


@dataclass
class LedgerEntry:
    at: float
    account: str
    api: Api
    job_id: str
    tool: str
    kind: str  # reserve | confirm | refund | charge | job
    amount: float
    balance: float


@dataclass
class RequestRecord:
    at: float
    method: str
    url: str  # the full URL as received, query string included
    path: str
    status: int = 0
    account: str | None = None
    idempotency_key: str | None = None
    authorization: bool = False
    fault: str | None = None
    created_job: str | None = None
    job: str | None = None  # the job the request was about (a poll, a result, a download)
    upload: str | None = None  # web API: the upload (uid) it made or consumed


@dataclass
class AccountState:
    spec: Account
    used: float = 0.0
    frozen: float = 0.0

    @property
    def balance(self) -> float:
        return round(self.spec.credits - self.used - self.frozen, 6)


@dataclass
class Job:
    id: str
    api: Api
    account: str
    tool: str  # Open API tool, or the web jconfig name
    config: Any  # Open API config dict, or the parsed web jconfig
    media: Literal["image", "video"]
    created_at: float
    ready_at: float
    source: Path | None = None  # input file on the simulator's disk
    source_name: str = "input"
    source_sha256: str = ""
    output_format: str = "jpg"
    cost: float = 1.0
    status: str = "queued"  # queued | processing | succeeded | failed | canceled
    phase: str | None = None
    started_at: float | None = None
    finish_at: float | None = None
    finished_at: float | None = None
    processing_time: float = 0.1
    source_pending: bool = False  # waiting for a URL fetch
    planned_failure: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    result: Path | None = None
    result_info: dict[str, Any] | None = None
    reserved: float = 0.0
    charged: bool = False  # web API: first download paid
    deleted: bool = False
    webhook: str | None = None
    idempotency_key: str | None = None
    finalizing: bool = False
    out_dims: tuple[int, int] | None = None  # predicted output size (video resolution check)


@dataclass
class Upload:
    id: str
    account: str
    file_name: str
    content_type: str
    max_bytes: int
    expires_at: float
    path: Path
    size: int = 0
    put_done: bool = False
    consumed_by: str | None = None


@dataclass
class WebUpload:
    uid: str
    account: str
    name: str
    path: Path
    width: int
    height: int
    size: int


@dataclass
class Idem:
    fingerprint: str
    job_id: str
    expires_at: float


@dataclass
class FaultCounts:
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.clock = Clock(config.time_scale)
        self.lock = threading.RLock()
        self.rng = random.Random(config.faults.seed)
        # Which jobs fail is drawn apart from the per-request faults: it depends only on the order
        # the jobs are created in, not on how many polls came before (a timing matter).
        self.job_rng = random.Random(f"jobs-{config.faults.seed}")
        self.secret = secrets.token_bytes(16)
        self.workdir = Path(tempfile.mkdtemp(prefix="vance-sim-"))
        self.accounts = {a.name: AccountState(a) for a in config.accounts}
        self.jobs: dict[str, Job] = {}
        # Jobs still queued or processing, in creation order: what each scheduler tick and each
        # concurrency check looks at (every job ever made would make a tick cost grow with them).
        self.active: dict[str, Job] = {}
        self.uploads: dict[str, Upload] = {}
        self.web_uploads: dict[str, WebUpload] = {}
        self.idempotency: dict[tuple[str, str], Idem] = {}
        self.ledger: list[LedgerEntry] = []
        self.requests: list[RequestRecord] = []
        self.faults_injected: dict[str, int] = defaultdict(int)
        self.webhook_deliveries: list[dict[str, Any]] = []
        self.rate_windows: dict[str, tuple[float, int]] = {}
        self.visioncraft_chats: dict[str, int] = {}  # premium LLM chat_id -> turns
        # Passes of the job scheduler so far: a test that moved the clock waits for two more, and
        # knows the scheduler has looked at every job since (what did not change, will not).
        self.ticks = 0
        self.webhooks_in_flight = 0  # deliveries (with their retries) not over yet

    # --- identity -------------------------------------------------------------
    def new_id(self, prefix: str = "", nbytes: int = 16) -> str:
        """A fresh id, unique across restarts like a real service's (not drawn from the fault
        seed: a restarted simulator must never hand out an id of its previous life)."""
        return prefix + secrets.token_hex(nbytes)

    def account_for_web_token(self, token: str) -> AccountState | None:
        for acc in self.accounts.values():
            if any(hmac.compare_digest(token, t) for t in acc.spec.web_tokens):
                return acc
        return None

    def account_for_open_key(self, key: str) -> AccountState | None:
        for acc in self.accounts.values():
            if key in acc.spec.revoked_keys:
                return None
            if any(hmac.compare_digest(key, k) for k in acc.spec.open_keys):
                return acc
        return None

    def revoke(self, key: str) -> None:
        """Revoke an Open API key or a web token (takes effect at once)."""
        with self.lock:
            for acc in self.accounts.values():
                if key in acc.spec.open_keys:
                    acc.spec.revoked_keys.append(key)
                if key in acc.spec.web_tokens:
                    acc.spec.web_tokens.remove(key)

    def draw_fault(self, kind: str, probability: float) -> bool:
        """One seeded draw: does the fault ``kind`` happen now? Counted when it does."""
        if not probability:
            return False
        with self.lock:
            hit = self.rng.random() < probability
            if hit:
                self.faults_injected[kind] += 1
            return hit

    # --- signing ----------------------------------------------------------------
    def sign(self, what: str, expires: int) -> str:
        return hmac.new(self.secret, f"{what}:{expires}".encode(), hashlib.sha256).hexdigest()

    def check_signature(self, what: str, expires: int, signature: str) -> bool:
        return hmac.compare_digest(self.sign(what, expires), signature)

    # --- rate limit ---------------------------------------------------------------
    def take_rate(self, key: str) -> tuple[bool, dict[str, str]]:
        """Fixed windows aligned to the epoch of the simulator's clock, per key: (allowed, the
        X-RateLimit-* headers, with Retry-After when refused). Whole seconds when the window is,
        else milliseconds; on the wall clock, in milliseconds, when the clock is scaled (a scaled
        answer is the unscaled one at the same simulated instant, its times divided by the scale)."""
        limit, window = self.config.rate_limit, self.config.rate_window
        now = self.clock.now()
        with self.lock:
            start = math.floor(now / window) * window
            seen, count = self.rate_windows.get(key, (start, 0))
            count = count if seen == start else 0
            allowed = count < limit
            if allowed:
                self.rate_windows[key] = (start, count + 1)
        whole = float(window).is_integer()
        reset = start + window  # epoch seconds: when this window ends

        def secs(t: float) -> str:
            return str(round(t)) if whole else f"{t:.3f}"

        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count - 1) if allowed else 0),
            "X-RateLimit-Reset": self.told_instant(reset) if self.clock.scaled else secs(reset),
        }
        if not allowed:  # whole seconds, as HTTP has them (unless the window is time-scaled)
            wait = max(1, math.ceil(reset - now)) if whole else reset - now
            headers["Retry-After"] = self.told_seconds(wait) if self.clock.scaled else secs(wait)
        return allowed, headers

    # --- what a client is told: the wall clock --------------------------------------
    def told_instant(self, at: float) -> str:
        """An instant of the simulated clock as a header tells it: epoch seconds on the wall clock
        (milliseconds when the clock is scaled)."""
        wall = self.clock.to_wall(at)
        return f"{wall:.3f}" if self.clock.scaled else str(round(wall))

    def told_seconds(self, seconds: float) -> str:
        """A duration of the simulated clock as ``Retry-After`` tells it: wall seconds, whole when
        they are, else milliseconds rounded up (a client told it never comes back early)."""
        wall = self.clock.wall_seconds(seconds)
        if float(wall).is_integer():
            return str(int(wall))
        return f"{math.ceil(wall * 1000 - 1e-6) / 1000:.3f}"

    # --- credits ------------------------------------------------------------------
    def _record(self, job: Job, kind: str, amount: float) -> None:
        acc = self.accounts[job.account]
        self.ledger.append(
            LedgerEntry(
                self.clock.now(), job.account, job.api, job.id, job.tool, kind, round(amount, 6), acc.balance
            )
        )

    def in_flight(self, account: str, media: str) -> int:
        return sum(
            1 for j in self.active.values() if j.account == account and j.media == media and not j.deleted
        )

    # --- scheduler ------------------------------------------------------------------
    def add_job(self, job: Job) -> Job:
        with self.lock:
            if self.config.faults.fail_job and self.job_rng.random() < self.config.faults.fail_job:
                job.planned_failure = "processing_failed"
                self.faults_injected["fail_job"] += 1
            self.jobs[job.id] = job
            if job.status in ("queued", "processing"):
                self.active[job.id] = job
            return job

    def due_for_start(self) -> None:
        """Start queued jobs whose delay has passed, within the account's processing slots."""
        now = self.clock.now()
        cfg = self.config
        running: dict[tuple[str, str], int] = defaultdict(int)
        for j in self.active.values():
            if j.status == "processing":
                running[(j.account, j.media)] += 1
        for j in list(self.active.values()):  # creation order; a copy, as _start may end a job
            if j.status != "queued" or j.source_pending or now < j.ready_at:
                continue
            cap = cfg.max_concurrent_images if j.media == "image" else cfg.max_concurrent_videos
            if running[(j.account, j.media)] >= cap:
                continue
            self._start(j, now)
            if j.status == "processing":
                running[(j.account, j.media)] += 1

    def _start(self, job: Job, now: float) -> None:
        acc = self.accounts[job.account]
        if job.planned_failure in {
            "upload_incomplete",
            "ssrf_blocked",
            "unsupported_format",
            "file_too_large",
        }:
            self._fail(job, job.planned_failure, "The source could not be used.")
            return
        if job.media == "video" and job.out_dims:
            long_side, short_side = max(job.out_dims), min(job.out_dims)
            if long_side > 4096 or short_side > 2160:
                self._fail(
                    job,
                    "resolution_limit_exceeded",
                    "Output resolution exceeds the engine limit (long side 4096, short side 2160).",
                )
                return
        if job.api == "open":
            if acc.balance + 1e-9 < job.cost:
                self._fail(job, "insufficient_credits", "Balance was consumed before the reservation.")
                return
            acc.frozen += job.cost
            job.reserved = job.cost
            self._record(job, "reserve", job.cost)
        job.status, job.phase, job.started_at = "processing", "processing", now
        job.finish_at = now + job.processing_time * self._spread_factor()

    def _spread_factor(self) -> float:
        """A job's time factor: log-normal, mean 1, sigma ``config.time_spread`` (1.0 when 0)."""
        sigma = self.config.time_spread
        if sigma <= 0:
            return 1.0
        rng = self.__dict__.setdefault("_spread_rng", random.Random(self.config.faults.seed + 7919))
        return math.exp(rng.gauss(0.0, sigma) - sigma * sigma / 2)

    def _end(self, job: Job, status: str, *, paid: bool = False) -> None:
        """The job ends in ``status``: its reserved credits are spent (``paid``) or given back."""
        acc = self.accounts[job.account]
        if job.reserved:
            acc.frozen -= job.reserved
            if paid:
                acc.used += job.reserved
            self._record(job, "confirm" if paid else "refund", job.reserved)
            job.reserved = 0.0
        job.status, job.phase, job.finished_at = status, None, self.clock.now()
        self.active.pop(job.id, None)

    def _fail(self, job: Job, code: str, message: str) -> None:
        self._end(job, "failed")
        job.error_code, job.error_message = code, message

    def cancel(self, job: Job) -> None:
        self._end(job, "canceled")

    def due_for_finish(self) -> list[Job]:
        """Jobs whose processing time is over; the caller renders them outside the lock."""
        now = self.clock.now()
        due = [
            j
            for j in self.active.values()
            if j.status == "processing"
            and not j.finalizing
            and j.finish_at is not None
            and now >= j.finish_at
        ]
        for j in due:
            j.finalizing = True
        return due

    def complete(
        self, job: Job, result: Path | None, info: dict[str, Any] | None, error: tuple[str, str] | None
    ) -> None:
        with self.lock:
            job.finalizing = False
            if job.status != "processing":  # canceled meanwhile
                return
            if error or job.planned_failure:
                code, msg = error or (
                    job.planned_failure or "processing_failed",
                    "The engine could not complete the task.",
                )
                self._fail(job, code, msg)
                return
            job.result, job.result_info = result, info
            self._end(job, "succeeded", paid=True)

    def charge_download(self, job: Job) -> bool:
        """Web API: the first download of a result costs credits; later ones are free."""
        with self.lock:
            if job.charged:
                return True
            acc = self.accounts[job.account]
            if acc.balance + 1e-9 < job.cost:
                return False
            acc.used += job.cost
            job.charged = True
            self._record(job, "charge", job.cost)
            return True

    # --- introspection for tests ----------------------------------------------------
    def charges(self, job_id: str | None = None) -> list[LedgerEntry]:
        with self.lock:
            return [
                e
                for e in self.ledger
                if e.kind in {"confirm", "charge"} and (job_id is None or e.job_id == job_id)
            ]

    def double_charges(self) -> list[str]:
        """Jobs charged more than once (must always be empty)."""
        with self.lock:
            seen: dict[str, int] = defaultdict(int)
            for e in self.ledger:
                if e.kind in {"confirm", "charge"}:
                    seen[e.job_id] += 1
            return [j for j, n in seen.items() if n > 1]

    def balance(self, account: str = "demo") -> float:
        with self.lock:
            return self.accounts[account].balance

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
