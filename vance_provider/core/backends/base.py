"""What every backend shares: the HTTP session, rate gate, retries and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import fsspec
import httpx

from ... import __version__
from ..errors import (
    APIError,
    ResultNotReadyError,
    ServerError,
    TransportError,
    TruncatedDownloadError,
    VanceError,
)
from ..models import ApiName, Balance, Job
from ..retry import RetryPolicy, parse_retry_after, retrying
from ..secrets import Secret, redact
from ..storage import AtomicWriter


class RateGate:
    """Shared by every API call of one client, so the client stays within the key's rate limit.

    It learns the window from ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset``, spends the
    remaining requests locally, and holds further calls until the window resets, instead of
    running into 429s; after a 429 every call waits ``Retry-After``.
    """

    def __init__(self) -> None:
        self.not_before = 0.0
        self.remaining: int | None = None
        self.reset_at = 0.0  # monotonic time when the current window ends

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            if self.not_before > now:
                await asyncio.sleep(self.not_before - now)
                continue
            if self.remaining is not None and now < self.reset_at:
                if self.remaining <= 0:
                    await asyncio.sleep(self.reset_at - now)
                    continue
                self.remaining -= 1
            return

    def block_for(self, seconds: float) -> None:
        self.not_before = max(self.not_before, time.monotonic() + seconds)

    def observe(self, headers: httpx.Headers) -> None:
        remaining, reset = headers.get("x-ratelimit-remaining"), headers.get("x-ratelimit-reset")
        if remaining is None or reset is None:
            return
        try:
            left, reset_in = int(remaining), min(60.0, max(0.0, float(reset) - time.time()))
        except ValueError:
            return
        reset_at = time.monotonic() + reset_in
        if self.remaining is None or reset_at > self.reset_at + 0.5:  # a new window
            self.remaining, self.reset_at = left, reset_at
        else:  # answers arrive out of order: trust the lowest count seen in this window
            self.remaining = min(self.remaining, left)


class Backend:
    """Base of the API backends. Subclasses implement the verbs and ``map_error``."""

    api: ApiName
    default_base_url: str

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
        async for attempt in retrying(policy):
            with attempt:
                if gated:
                    await self.gate.wait()
                self.calls[name] += 1
                try:
                    response: httpx.Response = await send()
                except httpx.TimeoutException as exc:
                    raise TransportError(f"{self.api} API {name}: timed out ({type(exc).__name__})") from None
                except httpx.TransportError as exc:
                    raise TransportError(
                        f"{self.api} API {name}: connection failed ({type(exc).__name__})"
                    ) from None
                self.gate.observe(response.headers)
                error = self.map_error(name, response)
                if error is not None:
                    if isinstance(error, APIError) and error.status_code == 429:
                        self.gate.block_for(error.retry_after or 1.0)
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

    def options(self, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
        """Per-call storage options (a batch's), else the client's."""
        return storage_options if storage_options is not None else self.storage_options

    @contextlib.asynccontextmanager
    async def open_source(
        self, url: str, storage_options: dict[str, Any] | None = None
    ) -> AsyncIterator[Any]:
        """A seekable file object over any fsspec URL, opened fresh for each attempt."""
        so = self.options(storage_options)
        fh = await asyncio.to_thread(lambda: fsspec.open(url, "rb", **(so or {})).open())
        try:
            yield fh
        finally:
            await asyncio.to_thread(fh.close)

    # --- streaming a result to storage ------------------------------------------------------
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
        """Stream a download into ``dest`` atomically; retry when it is cut short."""
        async for attempt in retrying(self.retry):
            with attempt:
                if gated:
                    await self.gate.wait()
                self.calls[name] += 1
                try:
                    async with request() as response:
                        if response.status_code != 200 or response.headers.get("content-type", "").startswith(
                            "application/json"
                        ):
                            await response.aread()  # an error body, small
                            raise self.map_error(name, response) or ServerError(
                                f"{self.api} API {name}: unexpected HTTP {response.status_code} for a download",
                                status_code=response.status_code,
                            )
                        final = dest if _has_media_ext(dest) else f"{dest}.{ext_for(response)}"
                        writer = AtomicWriter(final, self.options(storage_options))
                        await asyncio.to_thread(writer.open)
                        try:
                            async for chunk in response.aiter_bytes(1 << 20):
                                await asyncio.to_thread(writer.write, chunk)
                            declared = response.headers.get("content-length")
                            size = int(declared) if declared else expected_size
                            if expected_size is not None and size is not None and size != expected_size:
                                raise TruncatedDownloadError(
                                    f"{name}: server sent {size} bytes, job reported {expected_size}"
                                )
                            return await asyncio.to_thread(writer.commit, size)
                        except BaseException:
                            await asyncio.to_thread(writer.abort)
                            raise
                except httpx.TimeoutException:
                    raise TransportError(f"{self.api} API {name}: download timed out") from None
                except httpx.TransportError as exc:
                    raise TruncatedDownloadError(
                        f"{self.api} API {name}: connection lost during download ({type(exc).__name__})"
                    ) from None
        raise AssertionError("unreachable")

    # --- the verbs ----------------------------------------------------------------------------
    async def submit(
        self,
        source: str,
        size: int,
        call: Any,
        idempotency_key: str | None,
        storage_options: dict[str, Any] | None = None,
    ) -> Job:
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
    "image/gif": "gif",
}
MEDIA_EXTS = {"jpg", "jpeg", "png", "webp", "mp4", "mov", "gif"}


def _has_media_ext(url: str) -> bool:
    name = url.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[1].lower() in MEDIA_EXTS


def ext_from_response(response: httpx.Response, default: str = "jpg") -> str:
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return EXT_BY_TYPE.get(ctype, default)


__all__ = ["Backend", "RateGate", "ResultNotReadyError", "ext_from_response"]
