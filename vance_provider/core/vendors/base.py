"""What every backend shares: the HTTP session, error mapping, and the calls through the rate gate,
retries and bounded downloads of ``core/transport``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from fsspec.core import url_to_fs

from ... import __version__
from ..account import Account
from ..api.errors import (
    ConcurrencyLimitedError,
    DownloadTimeoutError,
    ProtocolError,
    RateLimitedError,
    ResultTooLargeError,
    ServerError,
    TransportError,
    TruncatedDownloadError,
    VanceError,
)
from ..api.models import ApiName, Balance, Capabilities, Job
from ..media import _has_media_ext, sniff
from ..media_check import CheckedReader, check_bytes, checked_chunks
from ..secrets import Secret, redact
from ..state.storage import AtomicWriter, is_local, open_remote
from ..transport.download import (
    _INLINE_WRITE,
    _SNIFF_BYTES,
    _WRITE_CHUNK,
    SMALL_SOURCE,
    DownloadOptions,
    _content_length,
    _labelled_file,
    _opener,
    _Paced,
    _read_head,
)
from ..transport.rate_gate import RateGate, Told
from ..transport.retry import RetryPolicy, parse_retry_after, retrying

log = logging.getLogger("vance_provider.core.backends.base")


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
        self.account: Account | None = None  # the account's state shared with other workers
        self._published: tuple[int | None, float] = (None, 0.0)  # the rate last told the account
        self._told_window = 0.0  # X-RateLimit-Reset of the newest window told the account
        self.calls: Counter[str] = Counter()
        self.storage_options = storage_options
        self.poll_after: dict[str, float] = {}  # job id -> monotonic time of its next poll
        # input URL -> SHA-256 of the bytes its last upload read whole and found well formed
        self.read_digests: OrderedDict[str, str] = OrderedDict()
        self.http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers={"User-Agent": f"vance-pipelines/{__version__} caller/{caller}"},
        )
        if transport is None:  # (imported here: httpcore loads with the client's transport, not before)
            from ..transport.pool import install

            install(self.http)  # idle connections checked without anyio's attribute table

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
                granted = None  # the store's clock when the account let this request go
                if gated and (account := self._rate_account()) is not None:
                    granted = await account.acquire_request()  # the account's rate, across workers
                sent = await self.gate.wait(paced=granted is None) if gated else None
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
                    told = self.gate.observe(response.headers, sent, limited=limited, retry_after=wait)
                    if isinstance(error, ConcurrencyLimitedError):
                        self.gate.refused_for_concurrency()
                    if self.account is not None:
                        await self._tell_account(told, wait if limited else None, granted)
                if error is not None:
                    raise error
                return response
        raise AssertionError("unreachable")

    def _rate_account(self) -> Account | None:
        """The account a call waits on for its rate: once a rate is known, and before any answer
        (so that the account counts the first calls too); none where answers tell no rate."""
        return self.account if self.gate.limit or not self.gate.answers else None

    async def _tell_account(self, told: Told, retry_after: float | None, granted: float | None) -> None:
        """Share what an answer taught the gate (``told``: what its observe returned): a new rate,
        a 429's wait (every worker of the account then holds back until it has passed), or the
        first word of a newer rate window (what it has left: the account spends it at once;
        ``granted``: when the account let the answered request go, on the store's clock)."""
        assert self.account is not None
        rate = (self.gate.limit, round(self.gate.window, 3))
        window = self.gate.window_told(told) if retry_after is None else None
        seen = None if window is None else (*window, granted)
        if seen is not None and seen[0] <= self._told_window + 1e-3:
            seen = None
        if (
            retry_after is None
            and seen is None
            and (rate == self._published or not self.gate.limit or not self.gate.window)
        ):
            return
        self._published = rate
        if seen is not None:
            self._told_window = seen[0]
        reset_epoch = told[1] if retry_after is not None else None
        await self.account.learn(
            limit=self.gate.limit,
            window=self.gate.window or None,
            retry_after=retry_after,
            reset_epoch=reset_epoch,
            seen=seen,
        )

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

    #: How many upload digests are kept for :meth:`uploaded_sha256` (a caller that never asks
    #: for them does not make them pile up).
    max_read_digests = 4096

    def _verified(self, url: str, digest: str) -> None:
        self.read_digests[url] = digest
        self.read_digests.move_to_end(url)
        while len(self.read_digests) > self.max_read_digests:
            self.read_digests.popitem(last=False)

    def uploaded_sha256(self, url: str) -> str | None:
        """The SHA-256 of ``url``'s bytes as its last upload read them whole (and found the file
        well formed), taken out: ``None`` when no upload did."""
        return self.read_digests.pop(url, None)

    @contextlib.asynccontextmanager
    async def open_source(
        self, url: str, storage_options: dict[str, Any] | None = None, size: int | None = None
    ) -> AsyncIterator[Any]:
        """A seekable file object over any fsspec URL, opened fresh for each attempt; or, when
        ``size`` says the file is small, its bytes (an upload of bytes is one write, and cheaper
        to send than a file read in chunks).

        What is read is checked and hashed as it goes (:mod:`~..media_check`): a truncated or
        corrupt input raises :class:`UnreadableInputError` before its last bytes are handed
        over (its upload is never complete: no job, no charge), and a whole, well-formed read
        leaves its SHA-256 for :meth:`uploaded_sha256`."""
        fs, path = url_to_fs(url, **(self.options(storage_options) or {}))
        if size is not None and 0 < size <= SMALL_SOURCE:
            data = await _read_head(fs, path, SMALL_SOURCE + 1)
            if len(data) <= SMALL_SOURCE:  # (a file that grew since it was listed is streamed)
                yield check_bytes(url, data, self._verified)
                return
        local = is_local(fs)  # opening and closing a local file does not block: no thread hop each
        fh = _opener(fs)(path, "rb") if local else await asyncio.to_thread(open_remote, fs, path)
        try:
            yield CheckedReader(fh, url, self._verified)
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
        else:
            _read_parts_by(request, UPLOAD_READ)
        return await self.http.send(request)

    def source_chunks(self, url: str, storage_options: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
        """The chunks of an input for a streamed upload (a PUT), checked and hashed as
        :meth:`open_source` does; the end is judged before the last chunk goes."""
        return checked_chunks(url, self.options(storage_options), self._verified)

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
        account = self._rate_account() if gated else None
        granted = await account.acquire_request() if account is not None else None
        sent = await self.gate.wait(paced=granted is None) if gated else None
        self.calls[name] += 1
        try:
            async with fetch.request() as response:
                if gated:  # the web download is an API call: its answer teaches the gate too
                    limited = response.status_code == 429
                    wait = self.retry_after(response) if limited else None
                    told = self.gate.observe(response.headers, sent, limited=limited, retry_after=wait)
                    if self.account is not None:
                        await self._tell_account(told, wait, granted)
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
                        # The chunks are kept as they came and written one by one: gathering them
                        # in one buffer copied every byte twice (and mapped fresh memory for it).
                        received, held, chunks, chunk = 0, 0, [], head
                        while chunk:
                            received += len(chunk)
                            if limit is not None and received > limit:
                                raise self._too_large(
                                    name, f"went on past {limit} bytes", limit, expected_size
                                )
                            chunks.append(chunk)
                            held += len(chunk)
                            if held >= _WRITE_CHUNK:
                                await asyncio.to_thread(writer.put, *chunks)
                                held, chunks = 0, []
                            chunk = await body.next()
                        size = declared if declared is not None else expected_size
                        if not writer.is_open and writer.local and held <= _INLINE_WRITE:
                            # A small file on local disk is written in microseconds: a thread hop
                            # costs more (the worker's wake-up and the GIL handed back and forth).
                            return writer.finish(*chunks, expected_size=size)
                        return await asyncio.to_thread(
                            functools.partial(writer.finish, *chunks, expected_size=size)
                        )
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


_ERROR_BODY_MAX = 64 * 1024  # an error answer is read this far, never further

#: How much of a file a multipart upload reads at once. httpx reads 64 KiB, and each piece went
#: down through h11, httpcore and anyio to the socket on its own: a 4 MB photo's upload took
#: ~11.5 ms of CPU, ~9.8 at 256 KiB (1 MiB saved no more, and held more per upload in flight).
UPLOAD_READ = 256 << 10


def _read_parts_by(request: httpx.Request, size: int) -> None:
    """Have ``request``'s multipart file parts read ``size`` bytes at once (httpx's own chunk size
    is a class attribute; this sets it on the request's parts only). Left as it is where the body
    is not httpx's multipart stream."""
    for field in getattr(request.stream, "fields", ()):
        if isinstance(getattr(field, "CHUNK_SIZE", None), int):
            field.CHUNK_SIZE = max(field.CHUNK_SIZE, size)


Backend.downloads = DownloadOptions()


__all__ = ["Backend", "Submission"]
