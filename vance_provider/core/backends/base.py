"""What every backend shares: the HTTP session, rate gate, retries and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from fsspec.core import url_to_fs

from ... import __version__
from ..errors import (
    ConcurrencyLimitedError,
    ConfigurationError,
    DownloadStalledError,
    DownloadTimeoutError,
    ProtocolError,
    RateLimitedError,
    ResultNotReadyError,
    ResultTooLargeError,
    ServerError,
    TransportError,
    TruncatedDownloadError,
    VanceError,
)
from ..inputs import sniff
from ..models import ApiName, Balance, Capabilities, Job
from ..retry import RetryPolicy, parse_retry_after, retrying
from ..secrets import Secret, redact
from ..storage import AtomicWriter, is_local

log = logging.getLogger(__name__)


class RateGate:
    """Shared by every API call of one client (one backend per client), so the client stays within
    the key's request rate: a token bucket whose rate is learned from what the server says.

    The documents promise ``Retry-After`` and ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset``
    (epoch seconds: when the window ends) on a ``429 rate_limited``; so:

    - After a 429 nothing goes until ``Retry-After`` has passed and the window has reset. Then
      one request goes first (the probe) and the others follow it one by one, ``interval``
      apart: never all at once. Each caller takes its own slot; none sleeps to a shared instant.
    - ``interval`` is ``window / Limit``, with a margin. The window is at least as long as the
      time one was seen to have left (``Reset`` less the server's clock, read through
      ``Retry-After``), and a 429 although paced makes it 20 % longer, up to the shortest time
      seen from one reset to a later one (a whole number of windows). So pacing too fast only
      ever slows it down. A 429 without ``X-RateLimit-Limit`` paces by how many requests
      passed in its ``Retry-After``.
    - When successful answers carry ``X-RateLimit-Remaining`` too (not promised; our simulator
      sends them by default), what is left of the window is spent without pacing, then calls
      wait for the reset. A late answer from an older window (its ``Reset`` is earlier) says
      nothing about the current one and is ignored.
    - A 429 to a request sent before the current block began is old news: ignored.
    """

    MARGIN = 1.1  # pace this much under the learned rate: arrival times at the server jitter
    GROWTH = 1.2  # a 429 although paced: the window is this much longer than thought, at least
    MAX_WINDOW = 3600.0

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self.limit: int | None = None  # X-RateLimit-Limit: requests per window
        self.window = 0.0  # the window is at least this long (seconds)
        self.reset: float | None = None  # X-RateLimit-Reset (epoch) of the newest window seen
        self.reset_at = 0.0  # the same, on the monotonic clock
        self.remaining: int | None = None  # what the newest window has left, when answers say it
        self._fallback = 0.0  # the interval after a 429 without X-RateLimit-Limit
        self._sent: deque[float] = deque(maxlen=512)  # when recent requests went, less those refused
        self.not_before = 0.0  # monotonic: nothing goes before this (Retry-After)
        self.next_at = 0.0  # monotonic: the bucket's next free slot
        self.blocked_at = -math.inf  # monotonic: when the current block began
        self._skew = 0.0  # how far the server's clock is ahead of ours (beyond a second)
        self._gap = math.inf  # the shortest time seen from one window's reset to a later one's
        self._last_spent = 0.0  # the share of the previous window's requests that were spent
        self._paced_since = math.inf  # monotonic: since when the gate knows a rate to pace by
        self.epoch = 0  # +1 whenever the schedule is redone: slots taken before are void
        self.limited = 0  # 429 rate_limited answers seen
        self.concurrency_refusals = 0  # 429 concurrency_limit_exceeded answers seen
        #: Called on each ``429 concurrency_limit_exceeded`` (a batch lowers its concurrency).
        self.on_concurrency_limit: list[Callable[[], None]] = []

    @property
    def interval(self) -> float:
        """Seconds between two requests when pacing (0: no limit known yet)."""
        if not self.limit:
            return self._fallback
        return self.MARGIN * self.window / self.limit

    async def wait(self) -> float:
        """Wait for this caller's turn; returns when it went (monotonic), for :meth:`observe`."""
        slot: float | None = None
        epoch = self.epoch
        while True:
            now = self._clock()
            if epoch != self.epoch:  # a 429 or a spent window came meanwhile: the slot is void
                slot, epoch = None, self.epoch
            if now < self.not_before:
                await self._sleep(self.not_before - now)
                continue
            left = self.remaining if now < self.reset_at else None  # what the server said is left
            known = left is not None
            if left is not None and left <= 0:
                self._hold(self.reset_at)  # spent: nothing more before the window ends
                continue
            if slot is None:
                if known:  # spend what is left of the window, no pacing needed
                    break
                slot = max(now, self.next_at)
                self.next_at = slot + self.interval
            if slot > now:
                await self._sleep(slot - now)
                continue
            break
        if known and self.remaining is not None:
            self.remaining -= 1
        self._sent.append(now)  # passed, unless a 429 for it comes back
        return now

    def observe(
        self,
        headers: Mapping[str, str],
        sent: float | None = None,
        *,
        limited: bool = False,
        retry_after: float | None = None,
    ) -> None:
        """Learn from an answer; ``limited`` for a ``429 rate_limited``, ``sent`` from :meth:`wait`."""
        now, wall = self._clock(), self._wall()
        sent = now if sent is None else sent
        paced = sent > self._paced_since  # the gate knew a rate when this went
        limit, remaining, reset = _rate_headers(headers)
        self.limit = limit or self.limit
        told = parse_retry_after(headers) if limited and reset is not None else None
        if told is not None and reset is not None and abs(reset - wall - self._skew - told) > 1.0:
            self._skew = reset - wall - told  # Reset is the server's clock, Retry-After is not
        if reset is not None:
            self._window_seen(reset, remaining, now, wall + self._skew)
        if self.interval > 0:
            self._paced_since = min(self._paced_since, now)
        if not limited:
            return
        self.limited += 1
        with contextlib.suppress(ValueError):
            self._sent.remove(sent)  # it did not pass
        if sent <= self.blocked_at:
            return  # sent before the current block began: that block covers it already
        wait = 1.0 if retry_after is None else retry_after
        if self.limit:
            if reset is None:  # Retry-After is what is left of the window, so it is no shorter
                self._learn_window(wait)
            elif paced:  # refused although paced: the window is longer than thought, but no
                # longer than from one reset to the next (a whole number of windows)
                self._learn_window(min(self.window * self.GROWTH, self._gap))
        else:  # nothing says the rate: as many as passed in the last Retry-After
            came = sum(1 for t in self._sent if t >= now - wait)
            self._fallback = self.MARGIN * min(wait, self.MAX_WINDOW) / max(1, came)
        until = now + wait
        if reset is not None and reset >= (self.reset or 0.0):
            until = max(until, self.reset_at)
        self._hold(until, block=True)

    def pressure(self) -> float:
        """How close the key's request rate is to its limit, 0 to 1: the share of the rate the gate
        allows itself (``MARGIN`` under the key's) used over the last couple of seconds; 1 while
        calls wait for a window to reset, 0 while no limit is known. Measured against the key's
        own rate, a gate pacing at its margin read 0.91, never "bound"."""
        now = self._clock()
        if now < self.not_before or (
            self.remaining is not None and self.remaining <= 0 and now < self.reset_at
        ):
            return 1.0
        if not self.limit or not self.window:
            return 0.0
        span, recent = min(self.window, 2.0), 0
        for sent in reversed(self._sent):  # the newest last
            if sent < now - span:
                break
            recent += 1
        return min(1.0, max(recent / span * self.interval, self._window_pace(now)))

    def _window_pace(self, now: float) -> float:
        """The share of the current window's requests spent, over the share of its time gone (the
        gate spends what a window has left without pacing, in bursts that then wait for its reset:
        over a couple of seconds the rate can look low while the window's budget runs out)."""
        if self.remaining is None or not self.limit or now >= self.reset_at:
            return 0.0
        gone = self.window - (self.reset_at - now)
        if gone < min(2.0, self.window / 4):  # too early in the window to tell: as the last one
            return self._last_spent
        return (self.limit - self.remaining) / self.limit / (gone / self.window)

    def refused_for_concurrency(self) -> None:
        """A ``429 concurrency_limit_exceeded``: the account's jobs in flight, not the key's rate,
        so no other call waits; the refused one retries after ``Retry-After``."""
        self.concurrency_refusals += 1
        for listener in self.on_concurrency_limit:
            listener()

    def _learn_window(self, seconds: float) -> None:
        self.window = max(self.window, min(seconds, self.MAX_WINDOW))

    def _hold(self, until: float, *, block: bool = False) -> None:
        """Nothing goes before ``until``; then the first caller (the probe), the others
        ``interval`` apart: slots taken before are void. ``block``: after a 429."""
        if until > self.not_before or block:
            self.not_before = max(self.not_before, until)
            self.next_at = self.not_before
            self.epoch += 1
        if block:
            self.blocked_at = self._clock()

    def _window_seen(self, reset: float, remaining: int | None, now: float, wall: float) -> None:
        """``wall``: the server's clock now (as far as its answers tell)."""
        if self.reset is not None and reset < self.reset - 1e-3:
            return  # a late answer from an older window: it says nothing about the current one
        self._learn_window(reset - wall)  # a window lasts at least what one had left
        if self.reset is None or reset > self.reset + 1e-3:  # a newer window
            if self.reset is not None:
                self._gap = min(self._gap, reset - self.reset)
                # The share of the window just ended that was spent, if this one follows it (just
                # after a reset, a key spent to the reset read 0.67: its calls had waited for it).
                left, limit = self.remaining, self.limit
                follows = reset - self.reset <= 1.5 * self.window
                self._last_spent = 1 - left / limit if follows and left is not None and limit else 0.0
            self.reset, self.reset_at, self.remaining = reset, now + (reset - wall), remaining
        elif remaining is not None:  # the same window, answers out of order: trust the lowest
            self.remaining = remaining if self.remaining is None else min(self.remaining, remaining)


def _rate_headers(headers: Mapping[str, str]) -> tuple[int | None, int | None, float | None]:
    """``X-RateLimit-Limit``, ``-Remaining``, ``-Reset`` (epoch seconds); ``None`` when absent or bad."""

    def number(name: str, kind: Callable[[str], Any]) -> Any:
        value = headers.get(name)
        try:
            return None if value is None else kind(value)
        except ValueError:
            return None

    limit, remaining = number("x-ratelimit-limit", int), number("x-ratelimit-remaining", int)
    reset = number("x-ratelimit-reset", float)
    if reset is not None and not 1e9 < reset < 1e11:  # not an epoch time: unusable
        reset = None
    return (limit if limit and limit > 0 else None), remaining, reset


@dataclass(frozen=True)
class _Fetch:
    """One download of :meth:`Backend.stream_to`: what it is called, how to start it, where it goes."""

    name: str
    request: Callable[[], Any]
    dest: str
    expected_size: int | None
    ext_for: Callable[[httpx.Response], str]
    storage_options: dict[str, Any] | None
    gated: bool


@dataclass(frozen=True)
class Submission:
    """One job to create: the input, the tool call, the idempotency key (where the API has them),
    the storage options, and what :meth:`Backend.stage` uploaded ahead of it (if anything)."""

    source: str
    size: int
    call: Any  # a ToolCall
    idempotency_key: str | None
    storage_options: dict[str, Any] | None = None
    staged: str | None = None


class Backend:
    """Base of the API backends. Subclasses implement the verbs and ``map_error``."""

    api: ApiName
    default_base_url: str  # its path is the API's path on a host (VisionCraft: the host's root)
    capabilities: Capabilities  # what this API can do; the engine branches on it
    token_prefix: str | None = None  # keys of this API start so (``api="auto"`` picks it by the key)
    extra_options: tuple[str, ...] = ()  # client options only this backend takes

    def __init__(
        self,
        token: Secret,
        *,
        base_url: str | None,
        timeout: httpx.Timeout,
        retry: RetryPolicy,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None,
        caller: str,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.token = token
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.retry = retry
        self.gate = RateGate()
        self.calls: Counter[str] = Counter()
        self.storage_options = storage_options
        self.poll_after: dict[str, float] = {}  # job id -> monotonic time of its next poll
        self.http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": f"vance-pipelines/{__version__} caller/{caller}"},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- one HTTP exchange, retried ---------------------------------------------------------
    async def call(
        self, name: str, send: Callable[[], Any], *, retry: bool = True, gated: bool = True
    ) -> httpx.Response:
        """Send with retries; ``send`` builds and sends one attempt and returns the response.

        ``gated=False`` for storage URLs (presigned uploads, signed results): not rate limited.
        """
        policy = self.retry if retry else RetryPolicy(max_attempts=1)
        async for attempt in retrying(policy, paced=gated):
            with attempt:
                sent = await self.gate.wait() if gated else None
                self.calls[name] += 1
                try:
                    response: httpx.Response = await send()
                except httpx.TimeoutException as exc:
                    raise TransportError(f"{self.api} API {name}: timed out ({type(exc).__name__})") from None
                except httpx.TransportError as exc:
                    raise TransportError(
                        f"{self.api} API {name}: connection failed ({type(exc).__name__})"
                    ) from None
                error = self.map_error(name, response)
                if gated:  # a 429 rate_limited holds every call; a concurrency 429 only this one
                    limited = isinstance(error, RateLimitedError)
                    wait = (
                        min(error.retry_after or 1.0, policy.max_retry_after)
                        if isinstance(error, RateLimitedError)
                        else None
                    )
                    self.gate.observe(response.headers, sent, limited=limited, retry_after=wait)
                    if isinstance(error, ConcurrencyLimitedError):
                        self.gate.refused_for_concurrency()
                if error is not None:
                    raise error
                return response
        raise AssertionError("unreachable")

    def map_error(self, name: str, response: httpx.Response) -> VanceError | None:
        raise NotImplementedError

    def retry_after(self, response: httpx.Response) -> float | None:
        return parse_retry_after(response.headers)

    @staticmethod
    def clean(text: Any) -> str:
        return redact(str(text))

    # --- answers that are not what the API documents ------------------------------------------
    #: Call names whose successful answer must be JSON: the type, and the keys it must hold
    #: (``"data.uid"`` looks inside ``data``). ``map_error`` checks them inside the retry loop.
    expect: dict[str, tuple[type, tuple[str, ...]]] = {}

    def protocol_error(
        self, name: str, response: httpx.Response, why: str, head: bytes | None = None
    ) -> ProtocolError:
        """A typed, retryable error naming the status, the content type and the first bytes
        (tokens redacted before the text is cut, so no part of one is shown)."""
        ctype = self.clean(response.headers.get("content-type") or "no content type")
        data = head if head is not None else response.content
        text = " ".join(self.clean(data[:4096].decode("utf-8", "replace")).split())
        shown = text[:80] + ("..." if len(text) > 80 else "")
        return ProtocolError(
            f"{self.api} API {name}: {why} (HTTP {response.status_code}, {ctype}, starts {shown!r})",
            code="protocol_error",
            status_code=response.status_code,
            content_type=ctype,
            head=shown,
            retry_after=self.retry_after(response),
            hint="the service or a proxy in between answered something else; it is retried",
        )

    def parse_json(self, name: str, response: httpx.Response, kind: type = dict) -> Any:
        """The answer's JSON, of type ``kind``; :class:`ProtocolError` for anything else."""
        try:
            body = json.loads(response.content)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            html = response.content.lstrip()[:1] == b"<"
            raise self.protocol_error(
                name, response, "an HTML page instead of JSON" if html else "truncated or malformed JSON"
            ) from None
        if not isinstance(body, kind):
            want = "an object" if kind is dict else "a list" if kind is list else kind.__name__
            raise self.protocol_error(name, response, f"expected {want}, got a JSON {type(body).__name__}")
        return body

    def check_answer(self, name: str, response: httpx.Response) -> ProtocolError | None:
        """``None`` when a successful answer is what ``expect`` says it should be."""
        rule = self.expect.get(name)
        if rule is None:
            return None
        kind, keys = rule
        try:
            body = self.parse_json(name, response, kind)
        except ProtocolError as exc:
            return exc
        for key in keys:
            node: Any = body
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                return self.protocol_error(name, response, f"the answer has no {key!r}")
        return None

    # --- polling pace -----------------------------------------------------------------------
    video_poll_interval = 5.0  # Open API: "about 2 s for images, 5-10 s for video"
    _sleep = staticmethod(asyncio.sleep)

    def note_poll(self, job: Job, response: httpx.Response) -> None:
        """Schedule the next poll of ``job``: not before the answer's ``Retry-After`` (a hint on
        any answer, not only a 429), and for a running video not before ``video_poll_interval``."""
        if job.status.terminal:
            self.poll_after.pop(job.id, None)
            return
        wait = min(self.retry_after(response) or 0.0, self.retry.max_retry_after)
        if job.media == "video":
            wait = max(wait, self.video_poll_interval)
        if wait > 0:
            self.poll_after[job.id] = time.monotonic() + wait
        else:
            self.poll_after.pop(job.id, None)

    def next_poll_in(self, job_id: str) -> float:
        """Seconds until ``job_id`` may be polled again (0: now)."""
        return max(0.0, self.poll_after.get(job_id, 0.0) - time.monotonic())

    async def pace_poll(self, job_id: str) -> None:
        """Wait, if the last answer about ``job_id`` asked for it (a poll loop polling faster
        than the service wants is slowed here, whichever loop it is)."""
        delay = self.next_poll_in(job_id)
        if delay > 0:
            log.debug("next poll of a job in %.1f s, as the service asked", delay)
            await self._sleep(delay)

    def options(self, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
        """Per-call storage options (a batch's), else the client's."""
        return storage_options if storage_options is not None else self.storage_options

    @contextlib.asynccontextmanager
    async def open_source(
        self, url: str, storage_options: dict[str, Any] | None = None, size: int | None = None
    ) -> AsyncIterator[Any]:
        """A seekable file object over any fsspec URL, opened fresh for each attempt; or, when
        ``size`` says the file is small, its bytes (an upload of bytes is one write, and cheaper
        to send than a file read in chunks)."""
        fs, path = url_to_fs(url, **(self.options(storage_options) or {}))
        if size is not None and 0 < size <= SMALL_SOURCE:
            data = await _read_head(fs, path, SMALL_SOURCE + 1)
            if len(data) <= SMALL_SOURCE:  # (a file that grew since it was listed is streamed)
                yield data
                return
        local = is_local(fs)  # opening and closing a local file does not block: no thread hop each
        fh = _opener(fs)(path, "rb") if local else await asyncio.to_thread(fs.open, path, "rb")
        try:
            yield fh
        finally:
            if local:
                fh.close()
            else:
                await asyncio.to_thread(fh.close)

    async def post_file(
        self, url: str, data: dict[str, Any], files: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """A multipart POST. A small file (bytes, see :meth:`open_source`) goes in one body, rendered
        first: httpx would write each part to the socket on its own, and on loopback each write
        costs the receiver's work as well."""
        request = self.http.build_request("POST", url, data=data, files=files, headers=headers)
        if all(isinstance(f[1], bytes) for f in files.values()):
            await request.aread()
        return await self.http.send(request)

    # --- streaming a result to storage ------------------------------------------------------
    #: Bounds of every download (see :class:`DownloadOptions`); the client sets its own.
    downloads: DownloadOptions

    async def stream_to(
        self,
        name: str,
        request: Callable[[], Any],
        dest: str,
        expected_size: int | None,
        ext_for: Callable[[httpx.Response], str],
        storage_options: dict[str, Any] | None = None,
        gated: bool = True,
    ) -> str:
        """Stream a download into ``dest`` atomically; retry when it is cut short or stalls.

        When ``dest`` has no media extension, the file's first bytes name its type (``ext_for``,
        the ``Content-Type``, only when they are not recognised). ``self.downloads`` bounds it: a
        deadline for the whole download (retries included), a minimum throughput, and a size
        limit (``expected_size``, else ``max_bytes``) checked against ``Content-Length`` before
        anything is written and against the bytes while they arrive.
        """
        opts = self.downloads
        deadline_at = None if opts.deadline is None else time.monotonic() + opts.deadline
        async for attempt in retrying(self.retry, paced=gated):
            with attempt:
                left = None if deadline_at is None else deadline_at - time.monotonic()
                if left is not None and left <= 0:
                    raise self._deadline_error(name)
                scope = asyncio.timeout(left)
                try:
                    async with scope:
                        return await self._stream_once(
                            _Fetch(name, request, dest, expected_size, ext_for, storage_options, gated)
                        )
                except TimeoutError:
                    if scope.expired():
                        raise self._deadline_error(name) from None
                    raise
        raise AssertionError("unreachable")

    def _deadline_error(self, name: str) -> DownloadTimeoutError:
        return DownloadTimeoutError(
            f"{self.api} API {name}: the download took longer than its {self.downloads.deadline:g} s "
            "deadline; nothing was kept",
            hint="raise DownloadOptions.deadline for big results on slow links",
        )

    def _too_large(self, name: str, what: str, limit: int, expected_size: int | None) -> ResultTooLargeError:
        bound = "the job reported" if expected_size is not None else "DownloadOptions.max_bytes allows"
        return ResultTooLargeError(
            f"{self.api} API {name}: the result {what}, more than the {limit} bytes {bound}; "
            "stopped at once, nothing was kept",
            code="result_too_large",
            hint="the service sent something else than the job's result; a rerun fetches it again",
        )

    async def _stream_once(self, fetch: _Fetch) -> str:
        """One attempt of :meth:`stream_to`."""
        name, dest, expected_size, gated = fetch.name, fetch.dest, fetch.expected_size, fetch.gated
        opts = self.downloads
        limit = expected_size if expected_size is not None else opts.max_bytes
        sent = await self.gate.wait() if gated else None
        self.calls[name] += 1
        try:
            async with fetch.request() as response:
                if gated:  # the web download is an API call: its answer teaches the gate too
                    limited = response.status_code == 429
                    wait = self.retry_after(response) if limited else None
                    self.gate.observe(response.headers, sent, limited=limited, retry_after=wait)
                what = f"{self.api} API {name}"
                body = _Paced(response.aiter_bytes(), opts.min_rate, opts.stall_window, what)
                try:
                    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if response.status_code != 200 or ctype == "application/json":
                        raise await self._error_answer(name, response, await body.read(_ERROR_BODY_MAX))
                    # The first bytes say what this is (read, never written, before any check).
                    head = await body.read(_SNIFF_BYTES)
                    fmt = sniff(head[:_SNIFF_BYTES])
                    if fmt is None and not _labelled_file(ctype):
                        # Not a file we know, and not labelled as one: an error page or answer.
                        raise await self._error_answer(
                            name, response, head + await body.read(_ERROR_BODY_MAX), not_a_file=True
                        )
                    declared = _content_length(response)
                    if limit is not None and declared is not None and declared > limit:
                        raise self._too_large(name, f"announces {declared} bytes", limit, expected_size)
                    if expected_size is not None and declared is not None and declared != expected_size:
                        raise TruncatedDownloadError(
                            f"{name}: server sent {declared} bytes, job reported {expected_size}"
                        )
                    if not head:
                        raise TruncatedDownloadError(f"{self.api} API {name}: the download is empty")
                    final = dest if _has_media_ext(dest) else f"{dest}.{fmt or fetch.ext_for(response)}"
                    # Storage is touched in whole chunks, each in one thread hop: a result smaller
                    # than a chunk is opened, written and published in a single hop.
                    writer = AtomicWriter(final, self.options(fetch.storage_options))
                    try:
                        received, buffer, chunk = 0, bytearray(), head
                        while chunk:
                            received += len(chunk)
                            if limit is not None and received > limit:
                                raise self._too_large(
                                    name, f"went on past {limit} bytes", limit, expected_size
                                )
                            buffer += chunk
                            if len(buffer) >= _WRITE_CHUNK:
                                await asyncio.to_thread(writer.put, bytes(buffer))
                                buffer.clear()
                            chunk = await body.next()
                        size = declared if declared is not None else expected_size
                        if not writer.is_open and writer.local and len(buffer) <= _INLINE_WRITE:
                            # A small file on local disk is written in microseconds: a thread hop
                            # costs more (the worker's wake-up and the GIL handed back and forth).
                            return writer.finish(bytes(buffer), size)
                        return await asyncio.to_thread(writer.finish, bytes(buffer), size)
                    except BaseException:
                        if writer.is_open:
                            await asyncio.to_thread(writer.abort)
                        raise
                finally:
                    await body.aclose()
        except httpx.TimeoutException:
            raise TransportError(f"{self.api} API {name}: download timed out") from None
        except httpx.TransportError as exc:
            raise TruncatedDownloadError(
                f"{self.api} API {name}: connection lost during download ({type(exc).__name__})"
            ) from None

    async def _error_answer(
        self, name: str, response: httpx.Response, data: bytes, not_a_file: bool = False
    ) -> VanceError:
        """The error a download answered with (its body read, at most a few KiB)."""
        dropped = ("content-length", "content-encoding")
        headers = [(k, v) for k, v in response.headers.items() if k.lower() not in dropped]
        answer = httpx.Response(response.status_code, headers=headers, content=data, request=response.request)
        error = self.map_error(name, answer)
        if error is not None:
            return error
        if not_a_file:
            return self.protocol_error(name, answer, "the download is neither an image nor a video", data)
        return ServerError(
            f"{self.api} API {name}: unexpected HTTP {response.status_code} for a download",
            status_code=response.status_code,
        )

    # --- the verbs ----------------------------------------------------------------------------
    async def stage(
        self, source: str, size: int, call: Any, storage_options: dict[str, Any] | None = None
    ) -> str | None:
        """Upload what can go up before the job exists (web upload, Open API video); returns
        what ``submit(staged=...)`` needs, or ``None`` when the job's creation carries the file."""
        return None

    async def submit(
        self,
        source: str,
        size: int,
        call: Any,
        idempotency_key: str | None,
        storage_options: dict[str, Any] | None = None,
        staged: str | None = None,
    ) -> Job:
        """Create the job of one input (each backend's :meth:`create`)."""
        return await self.create(Submission(source, size, call, idempotency_key, storage_options, staged))

    async def create(self, submission: Submission) -> Job:
        raise NotImplementedError

    async def check_call(self, call: Any) -> None:
        """Checks of a tool call that need the service (say, option lists); nothing is spent."""

    async def get_job(self, job_id: str) -> Job:
        raise NotImplementedError

    async def download(self, job: Job, dest: str, storage_options: dict[str, Any] | None = None) -> str:
        raise NotImplementedError

    async def cancel(self, job_id: str) -> Job:
        raise NotImplementedError

    async def delete(self, job_id: str) -> None:
        raise NotImplementedError

    async def balance(self) -> Balance:
        raise NotImplementedError


EXT_BY_TYPE = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "image/gif": "gif",
}
MEDIA_EXTS = {"jpg", "jpeg", "png", "webp", "mp4", "mov", "gif"}
_FILE_TYPES = ("application/octet-stream", "binary/octet-stream")
_SNIFF_BYTES = 64  # enough for every magic number the sniffer knows
_ERROR_BODY_MAX = 64 * 1024  # an error answer is read this far, never further
_WRITE_CHUNK = 1 << 20  # writes to storage in bounded chunks (1 MiB)
_INLINE_WRITE = 256 << 10  # a result up to this size, for local disk, is written on the loop
SMALL_SOURCE = 1 << 20  # inputs up to this size are read whole and uploaded as bytes


def _opener(fs: Any) -> Callable[..., Any]:
    """``open`` for local disk (fsspec's local file wrapper costs more per file), else ``fs.open``."""
    return open if is_local(fs) else fs.open


async def _read_head(fs: Any, path: str, n: int) -> bytes:
    """The first ``n`` bytes of a file: read at once on local disk (no thread hop for a small
    read), in a thread elsewhere."""

    def read() -> bytes:
        with _opener(fs)(path, "rb") as fh:  # (a ranged cat_file past the end is refused by some stores)
            return bytes(fh.read(n))

    return read() if is_local(fs) else await asyncio.to_thread(read)


@dataclass(frozen=True)
class DownloadOptions:
    """Bounds of one result download, every attempt together.

    ``deadline``: seconds for the whole download, retries included (``None``: no limit); then
    :class:`DownloadTimeoutError`. ``min_rate`` / ``stall_window``: at least ``min_rate`` bytes per
    second over every ``stall_window`` seconds, else the attempt fails as stalled
    (:class:`DownloadStalledError`, retried; ``min_rate=0`` turns the rule off). ``max_bytes``:
    the largest result taken when the service does not say its size (when it does, that size is
    the limit); past it, :class:`ResultTooLargeError`.
    """

    deadline: float | None = 3600.0
    min_rate: float = 1024.0
    stall_window: float = 30.0
    max_bytes: int | None = 8 * 1024**3

    def __post_init__(self) -> None:
        for field_name in ("deadline", "min_rate", "stall_window", "max_bytes"):
            value = getattr(self, field_name)
            if value is not None and (isinstance(value, bool) or not value >= 0):
                raise ConfigurationError(f"DownloadOptions.{field_name} must be a number >= 0, got {value!r}")
        if self.min_rate and not self.stall_window:
            raise ConfigurationError("DownloadOptions.stall_window must be > 0 when min_rate is set")


Backend.downloads = DownloadOptions()


class _Paced:
    """The chunks of a body, under a minimum-throughput rule: over every ``window`` seconds at
    least ``min_rate`` bytes per second must arrive, else :class:`DownloadStalledError`.

    The rule is checked on time even while nothing arrives; a pending read is never cancelled
    unless the rule fails (or the download ends), so no byte is lost between checks.
    """

    def __init__(self, chunks: AsyncIterator[bytes], min_rate: float, window: float, what: str) -> None:
        self._it = chunks.__aiter__()
        self._pending: asyncio.Future[bytes] | None = None
        self.min_rate, self.window, self.what = min_rate, window, what
        self._start, self._bytes = time.monotonic(), 0
        self._done = False

    async def next(self) -> bytes:
        """The next chunk; ``b""`` at the end of the body."""
        if self._done:
            return b""
        if not self.min_rate:  # no rule: read straight on
            try:
                return await self._it.__anext__()
            except StopAsyncIteration:
                self._done = True
                return b""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._it.__anext__())
        while True:
            timeout = max(0.0, self._start + self.window - time.monotonic())
            done, _ = await asyncio.wait({self._pending}, timeout=timeout)
            if done:
                task, self._pending = self._pending, None
                try:
                    chunk = task.result()
                except StopAsyncIteration:
                    self._done = True
                    return b""
                self._bytes += len(chunk)
                self._check()
                if chunk:
                    return chunk
                self._pending = asyncio.ensure_future(self._it.__anext__())
                continue
            self._check()

    async def read(self, n: int) -> bytes:
        """At least ``n`` bytes (fewer only at the end of the body)."""
        data = b""
        while len(data) < n:
            chunk = await self.next()
            if not chunk:
                break
            data += chunk
        return data

    def _check(self) -> None:
        if not self.min_rate:
            return
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < self.window:
            return
        if self._bytes < self.min_rate * elapsed:
            raise DownloadStalledError(
                f"{self.what}: the download stalled ({self._bytes} bytes in {elapsed:.1f} s, under "
                f"the minimum of {self.min_rate:g} bytes/s)",
                hint="retried; lower DownloadOptions.min_rate for very slow links",
            )
        self._start, self._bytes = now, 0

    async def aclose(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(self._it, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def _labelled_file(ctype: str) -> bool:
    """The ``Content-Type`` of a file (of a type the sniffer may not know), not of an answer."""
    return ctype.startswith(("image/", "video/")) or ctype in _FILE_TYPES


def _content_length(response: httpx.Response) -> int | None:
    try:
        value = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _has_media_ext(url: str) -> bool:
    name = url.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[1].lower() in MEDIA_EXTS


def ext_from_response(response: httpx.Response, default: str = "jpg") -> str:
    """The extension the ``Content-Type`` names (used only when the first bytes name none)."""
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return EXT_BY_TYPE.get(ctype, default)


__all__ = ["Backend", "DownloadOptions", "RateGate", "ResultNotReadyError", "ext_from_response"]
