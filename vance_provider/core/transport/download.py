"""Bounds of a result download, and the paced reader that enforces its minimum throughput."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ..api.errors import (
    ConfigurationError,
    DownloadStalledError,
)
from ..state.storage import is_local

_FILE_TYPES = ("application/octet-stream", "binary/octet-stream")


_SNIFF_BYTES = 64  # enough for every magic number the sniffer knows


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


class _Paced:
    """The chunks of a body, under a minimum-throughput rule: over every ``window`` seconds at
    least ``min_rate`` bytes per second must arrive, else :class:`DownloadStalledError`.

    The rule is checked on time even while nothing arrives; a pending read is never cancelled
    unless the rule fails (or the download ends), so no byte is lost between checks. Each read is
    awaited under a deadline that can only pass once the rule has failed (no task or timer of its
    own per chunk: a result of a few MB comes in ~100 chunks).
    """

    def __init__(self, chunks: AsyncIterator[bytes], min_rate: float, window: float, what: str) -> None:
        self._it = chunks.__aiter__()
        self.min_rate, self.window, self.what = min_rate, window, what
        self._start, self._bytes = time.monotonic(), 0
        self._done = False

    async def next(self) -> bytes:
        """The next chunk; ``b""`` at the end of the body."""
        while not self._done:
            try:
                chunk = await (self._timed() if self.min_rate else self._it.__anext__())
            except StopAsyncIteration:
                self._done = True
                break
            if chunk:
                return chunk
        return b""

    async def _timed(self) -> bytes:
        """One chunk under the rule. A window that has had its quota passes when it ends, and
        the next one starts empty: a read still pending at the end of that one has failed the
        rule, as has one pending at the end of a window short of its quota."""
        end = self._start + self.window
        quota_met = self._bytes >= self.min_rate * self.window
        began = time.monotonic()
        scope = asyncio.timeout(max(0.0, end + (self.window if quota_met else 0.0) - began))
        try:
            async with scope:
                chunk = await self._it.__anext__()
        except TimeoutError:
            if not scope.expired():
                raise
            if quota_met:  # the window that ended passed: the one after it has had nothing
                self._start, self._bytes = end, 0
            raise self._stalled(time.monotonic() - self._start) from None
        if quota_met and began < end <= time.monotonic():  # the window ended (and passed) meanwhile
            self._start, self._bytes = end, 0
        self._bytes += len(chunk)
        self._check()
        return chunk

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
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < self.window:
            return
        if self._bytes < self.min_rate * elapsed:
            raise self._stalled(elapsed)
        self._start, self._bytes = now, 0

    def _stalled(self, elapsed: float) -> DownloadStalledError:
        return DownloadStalledError(
            f"{self.what}: the download stalled ({self._bytes} bytes in {elapsed:.1f} s, under "
            f"the minimum of {self.min_rate:g} bytes/s)",
            hint="retried; lower DownloadOptions.min_rate for very slow links",
        )

    async def aclose(self) -> None:
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
