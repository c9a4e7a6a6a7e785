"""``AsyncVanceClient`` and its blocking twin ``VanceClient``: one surface over both APIs.

Every network call is written once, in an async backend. The sync client runs
the same coroutines on a private event-loop thread, so hooks, the CLI and
notebooks (which may already run a loop) get the same behaviour as triggers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

import httpx

from .account import Account, Rate, open_account
from .account.urls import store_url
from .api.errors import (
    ConfigurationError,
    InvalidInputError,
    JobFailedError,
    WaitTimeoutError,
)
from .api.idempotency import default_idempotency_key
from .api.models import API_CHOICES, ApiChoice, ApiName, Balance, Capabilities, Job, JobStatus, UsageRecord
from .batch.polling import poll_jobs
from .batch.runner import run_batch
from .blocking import blocking
from .inputs import check_input
from .reports.credits import usage_report
from .secrets import Secret, redact_url
from .state.storage import list_sources
from .tools import ToolCall, resolve
from .transport.download import DownloadOptions
from .transport.retry import RetryPolicy
from .vendors import BACKENDS, Backend, WebApiBackend
from .vendors.visioncraft.calls import AsyncVisionCraft, VisionCraft

if TYPE_CHECKING:  # the batch engine and pandas load only when used
    import pandas as pd

    from .batch.spec import BatchResult, BatchSpec, Progress
    from .reports.credits import ManifestRef

T = TypeVar("T")
log = logging.getLogger(__name__)


def detect_api(token: str, api: str = "auto") -> ApiName:
    """The API named, or with ``api="auto"`` the one the key's shape says: ``sk_live_`` keys belong
    to the Open API v1, anything else to the web API v1.

    VisionCraft keys have no recognisable shape: select that vendor with ``api="visioncraft"``.
    """
    if api in BACKENDS:
        return BACKENDS[api].api
    if api != "auto":
        raise ConfigurationError(f"api must be one of {', '.join(API_CHOICES)}; got {api!r}")
    by_key = [b.api for b in BACKENDS.values() if b.token_prefix and token.startswith(b.token_prefix)]
    return by_key[0] if by_key else WebApiBackend.api


def normalize_base_url(base_url: str | None, api: ApiName) -> str | None:
    """Accept a full API URL, a host URL (the API path is added) or a bare host."""
    if not base_url:
        return None
    url = base_url.strip()
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"base_url {redact_url(base_url)!r} is not an http(s) URL",
            hint="e.g. https://api-service.vanceai.com or http://127.0.0.1:8765",
        )
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigurationError(f"base_url {redact_url(base_url)!r} has an invalid port") from None
    path = parts.path.rstrip("/") or urlsplit(BACKENDS[api].default_base_url).path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


MAX_JOBS_ENV = "VANCE_ACCOUNT_MAX_JOBS"
# Until an answer tells the key's rate, workers are not paced by the store: each one's rate gate
# holds back after a 429 as before, and the 429's headers then pace every worker.
UNKNOWN_RATE = Rate(limit=1_000_000, window=1.0)


class ClientOptions(TypedDict, total=False):
    """The keyword options of both clients (see :class:`AsyncVanceClient`)."""

    api: ApiChoice
    base_url: str | None
    timeout: float
    retry: RetryPolicy | None
    max_connections: int
    transport: httpx.AsyncBaseTransport | None
    caller: str
    storage_options: dict[str, Any] | None
    premium: bool | None
    downloads: DownloadOptions | dict[str, Any] | None
    account_store: str | None
    account_max_jobs: int | None


class _ClientFacts:
    """What both clients say about themselves, read from their backend; and tool validation."""

    backend: Backend

    def __repr__(self) -> str:  # never a password of the base URL (http://user:pass@host)
        return f"{type(self).__name__}(api={self.api!r}, base_url={redact_url(self.base_url)!r})"

    @property
    def api(self) -> ApiName:
        return self.backend.api

    @property
    def base_url(self) -> str:
        return self.backend.base_url

    @property
    def capabilities(self) -> Capabilities:
        """What this client's API can do (see :class:`Capabilities`)."""
        return self.backend.capabilities

    @property
    def request_counts(self) -> dict[str, int]:
        return dict(self.backend.calls)

    def tool_call(
        self,
        tool: str,
        config: dict[str, Any] | None = None,
        *,
        output_format: str | None = None,
        jconfig: dict[str, Any] | str | None = None,
    ) -> ToolCall:
        """Validate a tool and its config for this client's API (raises before any upload)."""
        return resolve(tool, config, api=self.api, output_format=output_format, jconfig=jconfig)


class AsyncVanceClient(_ClientFacts):
    """Async client for VanceAI (both APIs).

    >>> async with AsyncVanceClient(token, base_url=sim.base_url) as client:
    ...     job = await client.submit("photo.jpg", "upscale", {"scale": 4})
    ...     job = await client.wait(job.id)
    ...     await client.download(job, "out/photo_x4.jpg")
    """

    def __init__(
        self,
        token: str,
        *,
        api: ApiChoice = "auto",
        base_url: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
        caller: str = "python",
        storage_options: dict[str, Any] | None = None,
        premium: bool | None = None,
        downloads: DownloadOptions | dict[str, Any] | None = None,
        account_store: str | None = None,
        account_max_jobs: int | None = None,
    ) -> None:
        """``premium`` (VisionCraft only): whether the key has the subscription; ``False`` refuses
        paid-only models and tools locally, before any request.

        ``downloads`` bounds every result download (a :class:`DownloadOptions` or its fields as a
        dict): a deadline, a minimum throughput, and a size limit when the service reports none.

        ``account_store`` is where every worker of the account shares its request rate, jobs in
        flight and credit budgets (``local``: this machine, the default; ``redis://...`` or
        ``postgresql://user:pass@host/db``: every machine; ``none``: this process only; unset:
        ``$VANCE_ACCOUNT_STORE``).
        ``account_max_jobs`` (or ``$VANCE_ACCOUNT_MAX_JOBS``): the account's cap on jobs in flight,
        shared by every worker through that store (unset: each process learns it from refusals).
        See ``docs/account.md``.
        """
        if isinstance(token, str) and token != token.strip():
            # Pasted into a connection or a secret with a newline: as is, the header would be invalid.
            log.debug("the API token had whitespace or a line break around it: stripped it")
            token = token.strip()
        if not token:
            raise ConfigurationError(
                "no API token given", hint="set VANCE_API_TOKEN or the connection's password"
            )
        api_name = detect_api(token, api)
        self._token = Secret(token)
        if base_url and (password := urlsplit(base_url.strip()).password):
            self._base_url_password = Secret(password)  # redacted from every log and error, as a token
        self.storage_options = storage_options
        cls = BACKENDS[api_name]
        extra: dict[str, Any] = {"premium": premium} if "premium" in cls.extra_options else {}
        self.backend = cls(
            self._token,
            **extra,
            base_url=normalize_base_url(base_url, api_name),
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            retry=retry or RetryPolicy(),
            max_connections=max_connections,
            transport=transport,
            caller=caller,
            storage_options=storage_options,
        )
        self.backend.downloads = _download_options(downloads)
        self.backend.account = shared_account(
            self.backend.base_url, self._token, account_store, account_max_jobs
        )
        self.charges: dict[str, UsageRecord] = {}  # Open API: what each finished job cost

    async def __aenter__(self) -> AsyncVanceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.backend.account is not None:
            await self.backend.account.close()
        await self.backend.aclose()

    # --- jobs ---------------------------------------------------------------------------------
    async def submit(
        self,
        source: str,
        tool: str | ToolCall,
        config: dict[str, Any] | None = None,
        *,
        output_format: str | None = None,
        jconfig: dict[str, Any] | str | None = None,
        idempotency_key: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> Job:
        """Check the input locally, upload it and start one job.

        ``storage_options`` (fsspec) override the client's for this source.
        """
        call = (
            tool
            if isinstance(tool, ToolCall)
            else self.tool_call(tool, config, output_format=output_format, jconfig=jconfig)
        )
        so = self.backend.options(storage_options)
        sources = await asyncio.to_thread(list_sources, source, None, so)
        if len(sources) != 1:
            raise InvalidInputError(
                "submit takes exactly one file",
                source=str(source),
                hint="use run_batch for folders, globs and lists",
            )
        src = sources[0]
        await asyncio.to_thread(check_input, src.url, src.size, call.media, self.api, so)
        key = idempotency_key or default_idempotency_key(src.url, src.fingerprint, call)
        return await self.backend.submit(src.url, src.size, call, key, so)

    async def stage(
        self, source: str, size: int, call: ToolCall, *, storage_options: dict[str, Any] | None = None
    ) -> str | None:
        """Upload a checked input ahead of its job, where the API allows (see :meth:`submit_checked`)."""
        return await self.backend.stage(source, size, call, self.backend.options(storage_options))

    async def submit_checked(
        self,
        source: str,
        size: int,
        call: ToolCall,
        *,
        idempotency_key: str | None = None,
        storage_options: dict[str, Any] | None = None,
        staged: str | None = None,
    ) -> Job:
        """Start one job for an input the caller has already listed and checked (the batch engine
        does): no second listing or check. ``staged`` is what :meth:`stage` returned."""
        key = idempotency_key or default_idempotency_key(source, str(size), call)
        so = self.backend.options(storage_options)
        return await self.backend.submit(source, size, call, key, so, staged=staged)

    async def check_call(self, call: ToolCall) -> None:
        """Checks that need the service (VisionCraft's option lists); nothing is spent."""
        await self.backend.check_call(call)

    async def get_job(self, job_id: str) -> Job:
        job = await self.backend.get_job(job_id)
        self._note_charge(job)
        return job

    def _note_charge(self, job: Job) -> None:
        caps = self.capabilities
        if caps.has_usage_history or not caps.charges_credits or caps.charges_on_download:
            return  # the service lists its charges, or a finished job costs nothing by itself
        if job.status is JobStatus.SUCCEEDED and job.id not in self.charges:
            self.charges[job.id] = UsageRecord(
                timestamp=str(job.raw.get("finished_at") or ""),
                tool=job.tool,
                kind="charge",
                credits=float(job.credits_charged or 0),
                balance=None,
                source=None,
                job_id=job.id,
                api=job.api,
            )

    async def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job is terminal; raise :class:`JobFailedError` when it failed."""
        [job] = await self.wait_all([job_id], poll_interval=poll_interval, timeout=timeout)
        if raise_on_failure and job.status is not JobStatus.SUCCEEDED:
            raise JobFailedError(job.id, job.error_code, job.error_message or job.raw_status)
        return job

    async def wait_all(
        self,
        job_ids: list[str],
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        max_interval: float = 15.0,
        on_update: Callable[[Job], Awaitable[None] | None] | None = None,
    ) -> list[Job]:
        """Poll many jobs until all are terminal, backing off gently for slow ones
        (:func:`~vance_provider.core.batch.polling.poll_jobs`); :class:`WaitTimeoutError` after ``timeout``."""

        deadline = None if timeout is None else time.time() + timeout
        result = await poll_jobs(
            self.get_job,
            job_ids,
            interval=poll_interval,
            max_interval=max_interval,
            deadline=deadline,
            on_update=on_update,
        )
        if result.pending:
            raise WaitTimeoutError(
                f"{len(result.pending)} job(s) not finished before the deadline: {', '.join(result.pending[:5])}"
            )
        return [result.done[j] for j in job_ids]

    async def download(
        self, job: Job | str, dest: str, *, storage_options: dict[str, Any] | None = None
    ) -> str:
        """Stream the result to ``dest`` (any fsspec URL) atomically; returns the final URL.

        When ``dest`` has no media extension, the result's type picks one.
        """
        if isinstance(job, str):
            job = await self.get_job(job)
        if job.status is not JobStatus.SUCCEEDED:
            raise JobFailedError(job.id, job.error_code, f"no result: the job is {job.status.value}")
        return await self.backend.download(job, dest, storage_options)

    async def cancel(self, job_id: str) -> Job:
        return await self.backend.cancel(job_id)

    async def delete(self, job_id: str) -> None:
        await self.backend.delete(job_id)

    async def enhance(
        self,
        source: str,
        dest: str,
        tool: str,
        config: dict[str, Any] | None = None,
        *,
        output_format: str | None = None,
        poll_interval: float = 1.0,
        timeout: float | None = None,
    ) -> tuple[Job, str]:
        """Submit, wait and download one file: the quickest way from a notebook."""
        job = await self.submit(source, tool, config, output_format=output_format)
        job = await self.wait(job.id, poll_interval=poll_interval, timeout=timeout)
        return job, await self.download(job, dest)

    @property
    def visioncraft(self) -> AsyncVisionCraft:
        """VisionCraft's own calls (``generate``, ``llm``, …); raises on another API."""

        return AsyncVisionCraft(self.backend)

    # --- credits ------------------------------------------------------------------------------
    async def balance(self) -> Balance:
        """The credit balance (costs no credits)."""
        return await self.backend.balance()

    async def usage(self) -> list[UsageRecord]:
        """Web API: the full paginated history. Open API (no history endpoint): the charges
        this client has seen on finished jobs."""
        if isinstance(self.backend, WebApiBackend):
            return await self.backend.usage()
        return list(self.charges.values())


def _download_options(value: DownloadOptions | dict[str, Any] | None) -> DownloadOptions:
    if value is None:
        return DownloadOptions()
    if isinstance(value, DownloadOptions):
        return value
    if isinstance(value, dict):
        try:
            return DownloadOptions(**value)
        except TypeError as exc:
            raise ConfigurationError(
                f"downloads: {exc}", hint="deadline, min_rate, stall_window, max_bytes"
            ) from None
    raise ConfigurationError(f"downloads must be a DownloadOptions or a dict, got {type(value).__name__}")


class _LoopThread:
    """A private event loop on a daemon thread; blocking calls run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vance-client-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        ended = threading.Event()

        async def until_ended() -> T:
            try:
                return await coro
            finally:
                ended.set()

        future = asyncio.run_coroutine_threadsafe(until_ended(), self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C (or any interruption) reaches this thread, not the loop's: cancel the work
            # and let its cleanup run (a batch writes its manifest) before we go on.
            future.cancel()
            ended.wait(timeout=30)
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        self.loop.close()


class VanceClient(_ClientFacts):
    """The blocking twin of :class:`AsyncVanceClient`: the same methods, without ``await``."""

    def __init__(self, token: str, **options: Unpack[ClientOptions]) -> None:
        """The same options as :class:`AsyncVanceClient`."""
        kwargs: dict[str, Any] = dict(options)
        self._loop = _LoopThread()
        try:
            self._async = self._loop.run(_build(token, kwargs))
        except BaseException:
            self._loop.stop()  # a bad setting must not leave a loop thread behind
            raise

    @property
    def backend(self) -> Backend:  # type: ignore[override]
        return self._async.backend

    @property
    def aio(self) -> AsyncVanceClient:
        return self._async

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run any coroutine of the async client on this client's loop."""
        return self._loop.run(coro)

    submit = blocking(AsyncVanceClient.submit)
    get_job = blocking(AsyncVanceClient.get_job)
    wait = blocking(AsyncVanceClient.wait)
    wait_all = blocking(AsyncVanceClient.wait_all)
    download = blocking(AsyncVanceClient.download)
    cancel = blocking(AsyncVanceClient.cancel)
    delete = blocking(AsyncVanceClient.delete)
    enhance = blocking(AsyncVanceClient.enhance)
    check_call = blocking(AsyncVanceClient.check_call)
    balance = blocking(AsyncVanceClient.balance)
    usage = blocking(AsyncVanceClient.usage)

    @property
    def visioncraft(self) -> VisionCraft:
        """VisionCraft's own calls, blocking (see :class:`~vance_provider.core.vendors.visioncraft.calls.VisionCraft`)."""

        return VisionCraft(self._async.visioncraft, self.run)

    def run_batch(
        self, spec: BatchSpec, on_progress: Callable[[Progress], None] | None = None
    ) -> BatchResult:
        """Run or resume a batch (see :mod:`vance_provider.core.batch.runner`); returns a ``BatchResult``."""

        return self.run(run_batch(self._async, spec, on_progress))

    def usage_report(
        self, manifests: Iterable[ManifestRef] = (), storage_options: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """The usage report as a pandas DataFrame (see :func:`vance_provider.core.reports.credits.usage_report`)."""

        return self.run(usage_report(self._async, manifests, storage_options))

    def close(self) -> None:
        try:
            self.run(self._async.aclose())
        finally:
            self._loop.stop()

    def __enter__(self) -> VanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _build(token: str, kwargs: dict[str, Any]) -> AsyncVanceClient:
    return AsyncVanceClient(token, **kwargs)


def shared_account(base_url: str, token: Secret, store: str | None, max_jobs: int | None) -> Account | None:
    """The account's shared state, or ``None`` where the store is ``none`` (this process only:
    its rate gate and job limit are enough)."""
    url = store_url(store)
    if url.lower() in ("none", "memory", "memory://"):
        return None
    if max_jobs is None and (env := os.environ.get(MAX_JOBS_ENV)):
        try:
            max_jobs = int(env)
        except ValueError:
            raise ConfigurationError(
                f"{MAX_JOBS_ENV}={env!r} is not a whole number", hint="e.g. 16: the account's job cap"
            ) from None
    return open_account(base_url, token, url, max_jobs=max_jobs, default_rate=UNKNOWN_RATE)
