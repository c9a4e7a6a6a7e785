"""Every error class the service can produce, typed; retries only for what is retryable."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.core.conftest import FAST_RETRY, TOKENS, async_client
from tests.core.helpers import count_status, created_jobs, release_held_jobs, uploads
from vance_provider.core import Job, JobStatus, RetryPolicy, ToolCall, VanceClient
from vance_provider.core.api.errors import (
    APIError,
    AuthenticationError,
    ConcurrencyLimitedError,
    ConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    ResultNotReadyError,
    ServerError,
    TransportError,
    TruncatedDownloadError,
    VanceError,
)
from vance_provider.core.secrets import Secret
from vance_provider.core.transport.retry import is_retryable, parse_retry_after, retry_delay
from vance_provider.core.vendors import OpenApiBackend, WebApiBackend
from vance_provider.sim import Account, Faults, SimulatorServer

WRONG = {"web": "wrongtoken0123456789abcdef01234567", "open": "sk_live_wrongkey0123456789abcdef0123"}


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc) + str(getattr(exc, "hint", ""))


def test_bad_token(
    api: str,
    sim: SimulatorServer,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    client = client_factory(sim, api, token=WRONG[api])
    with pytest.raises(AuthenticationError) as info:
        client.balance()
    assert WRONG[api] not in full_text(info.value) and TOKENS[api] not in full_text(info.value)
    assert "token" in str(info.value).lower() or "key" in str(info.value).lower()
    assert info.value.hint  # says what to do
    assert len(sim.state.requests) == 1  # not retried
    with pytest.raises(AuthenticationError):
        client.submit(str(make_image("a.jpg", 16, 16)), "upscale")
    assert sim.state.jobs == {}


def test_open_api_key_that_is_not_a_bearer_key(sim: SimulatorServer) -> None:
    with (
        VanceClient("not-a-cloud-key-0123456789", api="open", base_url=sim.base_url, timeout=5) as client,
        pytest.raises(AuthenticationError, match="unauthorized") as info,
    ):
        client.balance()
    assert "not-a-cloud-key-0123456789" not in full_text(info.value)


def test_revoked_key(api: str, sim: SimulatorServer, client: VanceClient) -> None:
    assert client.balance().available == 1000.0
    sim.state.revoke(TOKENS[api])
    with pytest.raises(AuthenticationError) as info:
        client.balance()
    assert TOKENS[api] not in full_text(info.value)


def test_insufficient_credits_at_submit(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    """No credits at all: web 30004 at upload, Open API 402 at the pre-flight check of job creation."""
    sim = sim_factory(accounts=[Account(credits=0)])
    client = client_factory(sim, api)
    with pytest.raises(InsufficientCreditsError) as info:
        client.submit(str(make_image("a.jpg", 16, 16)), "upscale")
    assert info.value.code == (30004 if api == "web" else "insufficient_credits")
    assert info.value.hint and "top up" in info.value.hint
    assert sim.state.jobs == {} and sim.state.charges() == []
    assert (
        sum(1 for r in sim.state.requests if r.path in ("/web_api/v1/upload", "/api/v1/jobs")) == 1
    )  # no retry


def test_web_insufficient_credits_at_download(
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """The web API charges on download: 30004 there, no file written, nothing charged."""
    sim = sim_factory(accounts=[Account(credits=0.5)])
    client = client_factory(sim, "web")
    job = client.wait(
        client.submit(str(make_image("a.jpg", 16, 16)), "upscale").id, poll_interval=0.05, timeout=20
    )
    with pytest.raises(InsufficientCreditsError) as info:
        client.download(job, str(tmp_path / "out" / "a.jpg"))
    assert info.value.code == 30004
    assert not (tmp_path / "out" / "a.jpg").exists()
    assert list((tmp_path / "out").glob("*")) == []  # no partial file either (none if the folder is absent)
    assert sim.state.charges() == [] and sim.state.balance() == 0.5
    assert sum(1 for r in sim.state.requests if r.path == "/web_api/v1/download") == 1


def test_invalid_request_from_the_service(
    api: str, sim: SimulatorServer, client: VanceClient, make_image: Callable[..., Path]
) -> None:
    """A config the service refuses (built by hand, past the local checks): not retried."""
    if api == "web":
        call = ToolCall(
            "web",
            "upscale",
            "image",
            jconfig={
                "name": "enlarge3",
                "config": {
                    "module": "enlarge3",
                    "module_params": {"model_name": "EnlargeStandard_4x_Stable", "scale": 3},
                },
            },
        )
    else:
        call = ToolCall(
            "open", "upscale", "image", open_tool="upscale", open_config={"scale": 3}, output_format="jpg"
        )
    with pytest.raises(InvalidRequestError) as info:
        client.submit(str(make_image("a.jpg", 16, 16)), call)
    assert "scale" in str(info.value) or "Illegal" in str(info.value)
    assert sim.state.jobs == {}
    assert sum(1 for r in sim.state.requests if r.path in ("/web_api/v1/transform", "/api/v1/jobs")) == 1


def test_unknown_job(api: str, sim: SimulatorServer, client: VanceClient, tmp_path: Path) -> None:
    ghost = Job(
        id="job_000000000000000000000000" if api == "open" else "0" * 32,
        api=api,  # type: ignore[arg-type]
        tool="upscale",
        status=JobStatus.SUCCEEDED,
        raw_status="succeeded",
    )
    with pytest.raises(NotFoundError):
        client.download(ghost, str(tmp_path / "ghost.jpg"))
    assert not (tmp_path / "ghost.jpg").exists()
    with pytest.raises(NotFoundError, match="job_not_found" if api == "open" else "10001"):
        client.get_job(ghost.id)  # web: progress documents only 10001 "Illegal parameter" for it
    with pytest.raises(NotFoundError):
        client.download(ghost.id, str(tmp_path / "ghost.jpg"))
    sized = dataclasses.replace(ghost, size=1234)  # straight to the download endpoint
    with pytest.raises(NotFoundError, match="job_not_found" if api == "open" else "10011"):
        client.download(sized, str(tmp_path / "ghost.jpg"))
    assert not (tmp_path / "ghost.jpg").exists()


def test_open_cancel_finished_job_is_a_conflict(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], make_image: Callable[..., Path]
) -> None:
    client = client_factory(sim, "open")
    job = client.wait(
        client.submit(str(make_image("a.jpg", 16, 16)), "upscale").id, poll_interval=0.05, timeout=20
    )
    with pytest.raises(ConflictError, match="not_cancelable"):
        client.cancel(job.id)
    assert len(sim.state.charges(job.id)) == 1


def test_open_cancel_and_delete(
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    sim = sim_factory(time_per_job=600.0, queue_delay=0.0)  # it runs until canceled
    client = client_factory(sim, "open")
    job = client.submit(str(make_image("a.jpg", 16, 16)), "upscale")
    deadline = time.monotonic() + 30
    while client.get_job(job.id).status is not JobStatus.PROCESSING:  # started: credits reserved
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)
    canceled = client.cancel(job.id)
    assert canceled.status is JobStatus.CANCELED
    assert [e.kind for e in sim.state.ledger if e.job_id == job.id] == ["reserve", "refund"]
    assert sim.state.balance() == 1000.0
    client.delete(job.id)
    client.delete(job.id)  # idempotent
    with pytest.raises(NotFoundError):
        client.get_job(job.id)


def test_web_api_cannot_cancel_or_delete(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient]
) -> None:
    client = client_factory(sim, "web")
    with pytest.raises(InvalidRequestError, match="cannot cancel"):
        client.cancel("0" * 32)
    with pytest.raises(InvalidRequestError, match="cannot delete"):
        client.delete("0" * 32)
    assert list(sim.state.requests) == []


def test_open_idempotency_conflict(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], make_image: Callable[..., Path]
) -> None:
    client = client_factory(sim, "open")
    src = str(make_image("a.jpg", 16, 16))
    first = client.submit(src, "upscale", {"scale": 2}, idempotency_key="my-key-1")
    assert client.submit(src, "upscale", {"scale": 2}, idempotency_key="my-key-1").id == first.id
    with pytest.raises(ConflictError, match="idempotency_conflict"):
        client.submit(src, "upscale", {"scale": 4}, idempotency_key="my-key-1")
    assert created_jobs(sim) == [first.id]


async def test_rate_limit_is_honoured(sim_factory: Callable[..., SimulatorServer]) -> None:
    """Only the Open API documents 429 rate_limited: a burst over 2 requests/s all succeed, after waiting."""
    sim = sim_factory(rate_limit=2, rate_window=1)
    async with async_client(
        sim, "open", retry=RetryPolicy(max_attempts=8, initial=0.01, max_delay=0.05)
    ) as client:
        started = time.monotonic()
        balances = await asyncio.gather(*(client.balance() for _ in range(4)))
        elapsed = time.monotonic() - started
    assert [b.available for b in balances] == [1000.0] * 4
    limited = [r for r in sim.state.requests if r.status == 429]
    ok = [r for r in sim.state.requests if r.status == 200]
    assert len(ok) == 4
    # The windows are aligned to the clock: the burst may fall across two of them and be refused
    # less, even not at all. A refused call waits out its Retry-After (1 s at least) and is not
    # refused again; retries that did not wait (10-50 ms apart) would be refused in the same window
    # until their 8 attempts ran out.
    assert len(limited) <= 2  # one shared gate: the burst does not keep hitting the limit
    if limited:
        assert elapsed >= 0.9  # it waited for the window instead of hammering


def test_rate_limit_fault_is_retried(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(faults=Faults(rate_limit=0.2, seed=1))
    client = client_factory(sim, api)
    job = client.wait(
        client.submit(str(make_image("r.jpg", 16, 16)), "upscale").id, poll_interval=0.05, timeout=30
    )
    client.download(job, str(tmp_path / "out" / "r.jpg"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.jpg"]
    if api == "open":
        assert sim.state.faults_injected["rate_limit"] >= 1


def test_concurrency_limit(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    """One job in flight at a time: the Open API answers 429 concurrency_limit_exceeded (retried after
    Retry-After), the web API keeps the job ``busy`` (polled as queued)."""
    # A job ends only when the test moves the simulator's clock: the first one holds the slot until
    # the second has been refused (Open API) or seen waiting for it (web API).
    hold = 600.0
    sim = sim_factory(max_concurrent_images=1, time_per_job=hold)
    client = client_factory(sim, api)
    first = client.submit(str(make_image("c0.jpg", 16, 16)), "upscale")

    def release() -> None:
        sim.state.config.time_per_job = 0.05  # the first job ends; the second, created later, is quick
        sim.state.clock.advance(hold)

    def release_after_the_refusal() -> None:
        deadline = time.monotonic() + 30
        while not any(r.status == 429 and r.path == "/api/v1/jobs" for r in list(sim.state.requests)):
            assert time.monotonic() < deadline, "the second job was never refused"
            time.sleep(0.01)
        release_held_jobs(sim, hold)  # once the first has started (else it would start held again)

    if api == "open":
        releaser = threading.Thread(target=release_after_the_refusal, daemon=True)
        releaser.start()
        second = client.submit(str(make_image("c1.jpg", 16, 16)), "upscale")  # retried after its 429
        releaser.join(30)
    else:
        second = client.submit(str(make_image("c1.jpg", 16, 16)), "upscale")
    seen: list[str] = []
    released: set[str] = set()

    def on_update(job: Any) -> None:
        seen.append(job.raw_status)
        # Web: the second job seen ready with the slot taken (the first started) ends the first;
        # seen running, itself.
        started = sim.state.jobs[first.id].status != "queued"
        ours = job.id == second.id and job.raw_status in ("busy", "process")
        if ours and started and job.raw_status not in released:
            released.add(job.raw_status)
            release()

    done = client.wait_all(
        [first.id, second.id], poll_interval=0.05, max_interval=0.1, timeout=30, on_update=on_update
    )
    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 2
    assert len(set(created_jobs(sim))) == 2
    if api == "open":
        refusals = [r for r in sim.state.requests if r.status == 429 and r.path == "/api/v1/jobs"]
        assert refusals and not any(r.created_job for r in refusals)
    else:
        assert "busy" in seen  # ready, but the account's only slot was taken


def test_transient_server_errors_are_retried(
    api: str,
    sim_factory: Callable[..., SimulatorServer],
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    sim = sim_factory(faults=Faults(error=0.5, seed=11))
    client = client_factory(sim, api)
    for i in range(2):
        job = client.wait(
            client.submit(str(make_image(f"e{i}.jpg", 20, 10)), "upscale", {"scale": 2}).id,
            poll_interval=0.05,
            timeout=30,
        )
        out = client.download(job, str(tmp_path / "out" / f"e{i}.jpg"))
        from PIL import Image

        with Image.open(out) as img:
            assert img.size == (40, 20)
    assert sim.state.faults_injected["error"] >= 2
    assert sim.state.double_charges() == []
    failures = count_status(sim, 503) + count_status(sim, 500)
    web_errors = sum(1 for r in sim.state.requests if r.fault == "error")
    assert failures + (web_errors if api == "web" else 0) >= 1


def test_one_attempt_surfaces_the_server_error(
    api: str, sim_factory: Callable[..., SimulatorServer], client_factory: Callable[..., VanceClient]
) -> None:
    sim = sim_factory(faults=Faults(error=1.0))
    client = client_factory(sim, api, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(ServerError) as info:
        client.balance()
    assert info.value.retryable
    assert len(sim.state.requests) == 1
    client3 = client_factory(sim, api, retry=RetryPolicy(max_attempts=3, initial=0.01))
    with pytest.raises(ServerError):
        client3.balance()
    assert len(sim.state.requests) == 4


def test_timeout_is_a_retryable_transport_error(
    api: str, sim_factory: Callable[..., SimulatorServer], client_factory: Callable[..., VanceClient]
) -> None:
    sim = sim_factory(faults=Faults(slow=1.0, slow_seconds=2.0))
    client = client_factory(sim, api, timeout=0.2, retry=RetryPolicy(max_attempts=2, initial=0.01))
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        client.balance()
    assert time.monotonic() - started < 2.0  # two attempts of 0.2 s, not the server's 2 s each
    assert len(sim.state.requests) == 2


def test_dropped_connections_are_retried(
    api: str, sim_factory: Callable[..., SimulatorServer], client_factory: Callable[..., VanceClient]
) -> None:
    sim = sim_factory(faults=Faults(drop=0.5, seed=1))
    client = client_factory(sim, api)
    for _ in range(4):
        assert client.balance().available == 1000.0
    assert sim.state.faults_injected["drop"] >= 1
    assert uploads(sim) == []


# --- retry policy ------------------------------------------------------------------------------------
def test_retry_delay_honours_retry_after() -> None:
    policy = RetryPolicy(initial=0.5, max_delay=8.0, max_retry_after=60.0)
    assert retry_delay(0, 3.0, policy) == 3.0
    assert retry_delay(5, 1.5, policy) == 1.5
    assert retry_delay(0, 60.0, policy) == 60.0


def test_retry_delay_jitters_otherwise() -> None:
    policy = RetryPolicy(initial=0.5, max_delay=8.0, max_retry_after=60.0)
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        samples = {retry_delay(attempt, None, policy) for _ in range(50)}
        assert all(0.75 * base <= s <= base for s in samples)
        assert len(samples) > 1  # jittered, so many clients do not retry in lock step
    # an absurd or empty Retry-After falls back to the backoff
    for bogus in (0.0, 3600.0, -1.0):
        assert 0.375 <= retry_delay(0, bogus, policy) <= 0.5


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-2", 0.0),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],  # a date in the past: now,
)
def test_parse_retry_after(header: str, value: float | None) -> None:
    assert parse_retry_after(httpx.Headers({"Retry-After": header})) == value
    assert parse_retry_after(httpx.Headers({})) is None


def test_what_is_retryable() -> None:
    for cls in (RateLimitedError, ConcurrencyLimitedError, ServerError, ResultNotReadyError):
        assert is_retryable(cls("x"))
    assert is_retryable(TransportError("x")) and is_retryable(TruncatedDownloadError("x"))
    for cls in (
        AuthenticationError,
        InsufficientCreditsError,
        InvalidRequestError,
        NotFoundError,
        ConflictError,
        APIError,
    ):
        assert not is_retryable(cls("x"))
    assert not is_retryable(ValueError("x"))
    assert issubclass(AuthenticationError, VanceError)


# --- error mapping of both editions of the web API -----------------------------------------------
def web_answer(body: dict[str, object], status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("POST", "http://x/web_api/v1/upload"))


def test_web_unknown_trans_id_is_not_found() -> None:
    backend = WebApiBackend(
        Secret("t0ken-under-test"),
        base_url=None,
        timeout=httpx.Timeout(1),
        retry=FAST_RETRY,
        max_connections=1,
        transport=None,
        caller="test",
    )
    answer = web_answer({"code": 10001, "msg": "Illegal Parameter"})
    assert isinstance(backend.map_error("progress", answer), NotFoundError)
    assert isinstance(backend.map_error("download", answer), NotFoundError)
    assert type(backend.map_error("transform", answer)) is InvalidRequestError
    missing = web_answer({"code": 10001, "msg": {"trans_id": ["The trans id field is required."]}})
    assert type(backend.map_error("progress", missing)) is InvalidRequestError


@pytest.mark.parametrize(
    ("body", "cls", "needle"),
    [
        (
            {"code": 30001, "msg": {"api_token": ["The api token field is required."]}},
            AuthenticationError,
            "missing",
        ),
        (
            {"code": 10001, "msg": {"api_token": ["The api token field is required."]}},
            AuthenticationError,
            "missing",
        ),
        ({"code": 30001, "msg": "Invalid API token"}, AuthenticationError, "Invalid API token"),
        ({"code": 30004, "msg": "Limit Exceed"}, InsufficientCreditsError, "insufficient credits"),
        ({"code": 10012, "msg": "Job exceeds limitation"}, InvalidRequestError, "exceeds the limits"),
        (
            {"code": 10001, "msg": {"uid": ["The uid field is required."]}},
            InvalidRequestError,
            "uid: The uid field",
        ),
        ({"code": 10010, "msg": "Internal error"}, ServerError, "internal error"),
        ({"code": 10011, "msg": "Invalid download link"}, NotFoundError, "does not exist"),
        ({"code": 10013, "msg": "jparam parse error"}, InvalidRequestError, "jconfig"),
        ({"code": 10014, "msg": "Job failed"}, ServerError, "failed"),
        ({"code": "99999", "msg": "new"}, APIError, "99999"),
    ],
)
def test_web_error_codes(body: dict[str, object], cls: type[Exception], needle: str) -> None:
    backend = WebApiBackend(
        Secret("t0ken-under-test"),
        base_url=None,
        timeout=httpx.Timeout(1),
        retry=FAST_RETRY,
        max_connections=1,
        transport=None,
        caller="test",
    )
    error = backend.map_error("upload", web_answer(body))
    assert type(error) is cls and needle in str(error)
    assert backend.map_error("upload", web_answer({"code": 200, "data": {}})) is None
    assert isinstance(backend.map_error("upload", web_answer({}, 503)), ServerError)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "invalid_api_key", AuthenticationError),
        (401, "unauthorized", AuthenticationError),
        (403, "geo_restricted", AuthenticationError),
        (402, "insufficient_credits", InsufficientCreditsError),
        (400, "invalid_parameter", InvalidRequestError),
        (400, "unsupported_tool", InvalidRequestError),
        (413, "file_too_large", InvalidRequestError),
        (415, "unsupported_format", InvalidRequestError),
        (404, "job_not_found", NotFoundError),
        (404, "upload_not_found", NotFoundError),
        (409, "not_cancelable", ConflictError),
        (409, "idempotency_conflict", ConflictError),
        (409, "upload_already_consumed", ConflictError),
        (429, "rate_limited", RateLimitedError),
        (429, "concurrency_limit_exceeded", ConcurrencyLimitedError),
        (503, "service_unavailable", ServerError),
        (500, "internal_error", ServerError),
        (502, "", ServerError),
        (429, "", RateLimitedError),
        (401, "", AuthenticationError),
    ],
)
def test_open_error_codes(status: int, code: str, cls: type[Exception]) -> None:
    backend = OpenApiBackend(
        Secret("sk_live_under_test"),
        base_url=None,
        timeout=httpx.Timeout(1),
        retry=FAST_RETRY,
        max_connections=1,
        transport=None,
        caller="test",
    )
    body = {"error": {"code": code, "message": "m", "type": "t"}} if code else {}
    response = httpx.Response(
        status,
        json=body,
        headers={"Retry-After": "2"},
        request=httpx.Request("GET", "http://x/api/v1/jobs/j"),
    )
    error = backend.map_error("get_job", response)
    assert type(error) is cls
    assert isinstance(error, APIError) and error.status_code == status and error.retry_after == 2.0
    ok = httpx.Response(202, json={"job_id": "j"}, request=httpx.Request("POST", "http://x/api/v1/jobs"))
    assert backend.map_error("create_job", ok) is None  # 202 Accepted is a success
    not_ready = httpx.Response(
        202,
        json={"error": {"code": "result_not_ready"}},
        request=httpx.Request("GET", "http://x/api/v1/jobs/j/result"),
    )
    assert isinstance(backend.map_error("result", not_ready), ResultNotReadyError)


def test_retry_after_http_date() -> None:
    import email.utils
    import time

    from vance_provider.core.transport.retry import parse_retry_after

    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= (parse_retry_after({"retry-after": when}) or 0) <= 31
    assert parse_retry_after({"retry-after": "not a date"}) is None


def test_web_balance_falls_back_to_get_and_keeps_the_token_out_of_logs(
    sim_factory, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.conftest import WEB_TOKEN
    from vance_provider.core import VanceClient

    sim = sim_factory(web_point_get_only=True)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # put back after the test, as the root's is
    with VanceClient(WEB_TOKEN, base_url=sim.base_url) as client:
        balance = client.balance()
    assert balance.total == 1000.0
    methods = [(r.method, r.status) for r in sim.state.requests if r.path.endswith("/point")]
    assert methods == [("POST", 405), ("GET", 200)]
    logged = [r.getMessage() for r in caplog.records if "/point" in r.getMessage()]
    assert logged and all(WEB_TOKEN not in m for m in logged)
