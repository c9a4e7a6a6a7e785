"""Answers that are not what the client expects, uploads a signed URL would refuse, results named
by what they are, and the smaller edges of the vendors' documents (issue 12, sections 2-5).

Every case runs against the simulator with the knob that makes it happen, on both APIs where
it applies; the polling pace, the client's own rule about the answers it gets, against canned
answers (``httpx.MockTransport``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.core import BatchSpec, RetryPolicy, VanceClient
from vance_provider.core.api import errors as E
from vance_provider.core.secrets import Secret
from vance_provider.core.vendors import OpenApiBackend, WebApiBackend
from vance_provider.sim import Account, Faults, SimulatorServer

TOKENS = {"web": WEB_TOKEN, "open": OPEN_KEY}
FAST = RetryPolicy(max_attempts=10, initial=0.01, max_delay=0.05)
TWICE = RetryPolicy(max_attempts=2, initial=0.01, max_delay=0.02)
KINDS = ("html", "truncated", "list")
# The client's name of each endpoint the 'garble' fault can hit, per API.
CALLS = {
    "web": {"upload": "upload", "create_job": "transform", "get_job": "progress", "credits": "point"},
    "open": {
        "upload": "create_upload",
        "create_job": "create_job",
        "get_job": "get_job",
        "credits": "credits",
    },
}


def client_for(sim: SimulatorServer, api: str, **kwargs: Any) -> VanceClient:
    kwargs.setdefault("retry", FAST)
    return VanceClient(kwargs.pop("token", TOKENS[api]), base_url=sim.base_url, timeout=10, **kwargs)


def spec(tmp_path: Path, **kwargs: Any) -> BatchSpec:
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("max_poll_interval", 0.2)
    kwargs.setdefault("on_failure", "continue")
    return BatchSpec(str(tmp_path / "in"), str(tmp_path / "out"), "upscale", {"scale": 2}, **kwargs)


# --- 2. answers that are not what the client expects ---------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_garbled_answers_are_retried_like_a_5xx(
    api: str,
    kind: str,
    sim_factory: Callable[..., SimulatorServer],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """An HTML page, truncated JSON or a JSON list with HTTP 200 on job creation, polls, credits
    and uploads: each is retried, and the batch completes, paying each input once."""
    sim = sim_factory(faults=Faults(garble=0.3, garble_kind=kind, seed=5))
    for n in range(5):
        make_image(f"in/p{n}.jpg", 30 + n, 20)
    with client_for(sim, api) as client:
        result = client.run_batch(spec(tmp_path))
    assert result.done == 5, [i.error for i in result.items]
    assert sim.state.faults_injected["garble"] > 0
    assert sim.state.double_charges() == []


def test_garbled_polls_fail_the_item_not_the_batch(
    api: str, sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """When retries run out, the protocol error is reported per item; the batch is not aborted."""
    sim = sim_factory(faults=Faults(garble=1.0, garble_kind="html", garble_endpoints=("get_job",)))
    for n in range(3):
        make_image(f"in/p{n}.jpg", 30 + n, 20)
    with client_for(sim, api, retry=TWICE) as client:
        result = client.run_batch(spec(tmp_path))
        counts = client.request_counts
    assert result.done == 0 and result.failed == 3
    for item in result.items:
        assert item.job_id and item.error_code == "protocol_error"
        assert "HTML page instead of JSON" in (item.error or "") and "HTTP 200" in (item.error or "")
        assert "text/html" in (item.error or "") and "<!DOCTYPE html>" in (item.error or "")
    assert counts[CALLS[api]["get_job"]] == 3 * TWICE.max_attempts  # every poll was retried


@pytest.mark.parametrize("endpoint", ["upload", "create_job", "get_job", "credits"])
def test_each_endpoint_raises_a_typed_retried_protocol_error(
    api: str,
    endpoint: str,
    sim_factory: Callable[..., SimulatorServer],
    make_image: Callable[..., Path],
    test_video: Path,
) -> None:
    """Never a raw ``JSONDecodeError``, ``AttributeError`` or ``KeyError``: a ``ProtocolError`` with
    the status, the content type and the first bytes, after the same retries as a 5xx."""
    sim = sim_factory()
    image = str(make_image("in.jpg"))
    with client_for(sim, api, retry=TWICE) as client:
        job = client.submit(image, "upscale", {"scale": 2}) if endpoint == "get_job" else None
        sim.config.faults = Faults(garble=1.0, garble_endpoints=(endpoint,))
        for kind in KINDS:
            sim.config.faults.garble_kind = kind
            before = client.request_counts.get(CALLS[api][endpoint], 0)
            with pytest.raises(E.ProtocolError) as info:
                if endpoint == "get_job":
                    assert job is not None
                    client.get_job(job.id)
                elif endpoint == "credits":
                    client.balance()
                elif endpoint == "upload" and api == "open":  # the Open API's uploads are for video
                    client.submit(str(test_video), "video_upscale", {"scale": 2})
                else:
                    client.submit(image, "upscale", {"scale": 2})
            error = info.value
            assert error.retryable and error.status_code == 200 and error.code == "protocol_error"
            assert error.content_type and error.head is not None
            assert ("text/html" in error.content_type) == (kind == "html")
            assert client.request_counts[CALLS[api][endpoint]] - before == TWICE.max_attempts


@pytest.mark.parametrize("api_name", ["web", "open"])
def test_the_first_bytes_shown_never_carry_the_token(api_name: str) -> None:
    """An error page that echoes the request (the token in a form or a query string, raw or
    percent-encoded, cut or not at the end of the shown bytes) is redacted before it is cut."""
    token = "tok+en/with=signs0123456789" if api_name == "web" else "sk_live_tok+en/with=signs012345"
    cls = WebApiBackend if api_name == "web" else OpenApiBackend
    backend = cls(
        Secret(token),
        base_url=None,
        timeout=httpx.Timeout(1),
        retry=TWICE,
        max_connections=1,
        transport=None,
        caller="test",
    )
    encoded = (
        "tok%2Ben%2Fwith%3Dsigns0123456789" if api_name == "web" else "sk_live_tok%2Ben%2Fwith%3Dsigns012345"
    )
    # The token starts before the 80th character shown and, with the longer prefixes, ends past it.
    for prefix in ("", "x" * 45, "x" * 55):
        for shown in (token, encoded):
            page = f"<html><body>{prefix}api_token={shown}&amp;trans_id=1</body></html>".encode()
            answer = httpx.Response(
                200,
                content=page,
                headers={"content-type": "text/html"},
                request=httpx.Request("POST", "https://x/progress"),
            )
            error = backend.map_error("progress" if api_name == "web" else "get_job", answer)
            assert isinstance(error, E.ProtocolError)
            text = str(error) + repr(error) + (error.head or "")
            assert token not in text and encoded not in text
            assert token[:12] not in text and encoded[:12] not in text  # not even a cut part


def test_web_errors_without_a_json_content_type_are_still_errors(
    sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """The web API's error bodies served as ``text/html``: typed errors, never a ``KeyError``,
    and never an error body stored as a result."""
    sim = sim_factory(web_error_content_type="text/html", accounts=[Account(credits=0.5)])
    with client_for(sim, "web", token="not-the-right-token-42") as bad:
        with pytest.raises(E.AuthenticationError):
            bad.balance()
    with client_for(sim, "web") as client:
        with pytest.raises(E.NotFoundError):
            client.get_job("0" * 32)
        job = client.wait(
            client.submit(str(make_image("in.jpg")), "upscale", {"scale": 2}).id, poll_interval=0.05
        )
        with pytest.raises(E.InsufficientCreditsError):  # charged at download: 0.5 credits are not enough
            client.download(job, str(tmp_path / "out" / "result"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    errors = [r for r in sim.state.requests if r.path.endswith(("/point", "/progress", "/download"))]
    assert errors and all(r.status == 200 for r in errors)


def test_retry_after_on_a_web_server_error_is_honoured() -> None:
    backend = WebApiBackend(
        Secret("t0ken-under-test"),
        base_url=None,
        timeout=httpx.Timeout(1),
        retry=TWICE,
        max_connections=1,
        transport=None,
        caller="test",
    )
    answer = httpx.Response(
        503, headers={"Retry-After": "3"}, request=httpx.Request("POST", "https://x/upload")
    )
    error = backend.map_error("upload", answer)
    assert isinstance(error, E.ServerError) and error.retry_after == 3.0


# --- 3. uploads that a signed URL would reject --------------------------------------------------
@pytest.mark.parametrize("name,ctype", [("clip.mp4", "video/mp4"), ("clip.mov", "video/quicktime")])
def test_video_upload_sends_the_type_the_url_signs(
    name: str, ctype: str, sim: SimulatorServer, test_video: Path, tmp_path: Path
) -> None:
    """``POST /uploads`` names the type the extension implies, and the ``PUT`` sends the same: the
    simulator's presigned URL checks it like a signed header."""
    assert sim.config.presign_content_type
    source = tmp_path / name
    shutil.copy(test_video, source)
    with client_for(sim, "open") as client:
        client.aio.backend.video_poll_interval = 0.05  # the simulator's video takes 0.1 s
        job = client.wait(
            client.submit(str(source), "video_upscale", {"scale": 2}).id, poll_interval=0.05, timeout=60
        )
    assert job.status.value == "succeeded"
    [upload] = sim.state.uploads.values()
    assert upload.content_type == ctype and upload.put_done
    puts = [r for r in sim.state.requests if r.method == "PUT"]
    assert [r.status for r in puts] == [200]


def test_a_put_with_another_content_type_is_refused_like_s3(sim: SimulatorServer, test_video: Path) -> None:
    headers = {"Authorization": f"Bearer {OPEN_KEY}"}
    ticket = httpx.post(
        f"{sim.open_url}/uploads",
        json={"file_name": "clip.mp4", "content_type": "video/mp4"},
        headers=headers,
    ).json()
    for sent in ({"Content-Type": "application/octet-stream"}, {}):
        refused = httpx.put(ticket["put_url"], content=test_video.read_bytes(), headers=sent)
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/xml")
        assert "<Error><Code>SignatureDoesNotMatch</Code>" in refused.text
        # The client reads the store's error shape.
        backend = OpenApiBackend(
            Secret(OPEN_KEY),
            base_url=None,
            timeout=httpx.Timeout(1),
            retry=TWICE,
            max_connections=1,
            transport=None,
            caller="test",
        )
        error = backend.map_error("put_upload", refused)
        assert (
            isinstance(error, E.APIError)
            and error.code == "SignatureDoesNotMatch"
            and error.status_code == 403
        )
    assert not sim.state.uploads[ticket["upload_id"]].put_done
    ok = httpx.put(ticket["put_url"], content=test_video.read_bytes(), headers={"Content-Type": "video/mp4"})
    assert ok.status_code == 200


# --- 4. naming results by what they are ----------------------------------------------------------
@pytest.mark.parametrize("label", ["image/png", "application/octet-stream", "text/html"])
def test_results_are_named_by_their_first_bytes(
    api: str,
    label: str,
    sim_factory: Callable[..., SimulatorServer],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A JPEG result labelled as something else is stored as ``.jpg``, and the file agrees."""
    sim = sim_factory(result_content_type=label)
    with client_for(sim, api) as client:
        job = client.wait(
            client.submit(str(make_image("in.jpg", 40, 30)), "upscale", {"scale": 2}).id, poll_interval=0.05
        )
        out = client.download(job, str(tmp_path / "result"))
    assert out.endswith("result.jpg")
    with Image.open(out) as img:
        assert img.format == "JPEG" and img.size == (80, 60)


def test_a_batch_output_passes_the_output_check(
    api: str, sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """Mislabelled results: the batch's outputs carry the extension of what they are, so the
    Dagster output check (format by content against the extension) agrees with every file."""
    from dagster_vance.checks import verify_outputs

    sim = sim_factory(result_content_type="image/png")
    for n in range(2):
        make_image(f"in/p{n}.jpg", 30 + n, 20)
    with client_for(sim, api) as client:
        batch = spec(tmp_path)
        result = client.run_batch(batch)
        call = client.tool_call(batch.tool, batch.config)
    assert result.done == 2
    for item in result.items:
        assert item.output and Path(item.output).suffix == ".jpg"
    reports = verify_outputs(result.items, call)
    assert [r.ok for r in reports] == [True, True], [r.problem for r in reports]


def test_a_download_that_is_no_file_is_a_protocol_error(
    sim_factory: Callable[..., SimulatorServer], make_image: Callable[..., Path], tmp_path: Path
) -> None:
    """An answer that is neither a known file nor labelled as one (an HTML error page with HTTP
    200 at the signed URL) is not stored under any name."""
    sim = sim_factory(result_content_type="text/html")
    with client_for(sim, "open", retry=TWICE) as client:
        job = client.wait(
            client.submit(str(make_image("in.jpg")), "upscale", {"scale": 2}).id, poll_interval=0.05
        )
        # The result store answers an error page in the result's place (its size, to pass that check).
        path = next(p for p in sim.state.workdir.iterdir() if p.name.startswith(job.id))
        path.write_bytes(b"<html><body>Service Unavailable</body></html>".ljust(job.size or 0, b" "))
        with pytest.raises(E.ProtocolError) as info:
            client.download(job, str(tmp_path / "out" / "result"))
    assert "neither an image nor a video" in str(info.value) and "text/html" in str(info.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- 5. smaller edges from the documents -----------------------------------------------------------
@pytest.mark.parametrize("refusal", ["405", "illegal_parameter", "missing_token"])
def test_web_balance_falls_back_to_get_on_the_documented_refusals(
    refusal: str, sim_factory: Callable[..., SimulatorServer]
) -> None:
    sim = sim_factory(web_point_get_only=True, web_point_post_answer=refusal)
    with client_for(sim, "web") as client:
        balance = client.balance()
    assert balance.total == 1000.0
    points = [(r.method, r.status) for r in sim.state.requests if r.path.endswith("/point")]
    assert points == [("POST", 405 if refusal == "405" else 200), ("GET", 200)]


def test_web_balance_does_not_fall_back_on_a_wrong_token(sim_factory: Callable[..., SimulatorServer]) -> None:
    """An invalid token is not a refused POST: no GET, so no URL ever carries that token."""
    sim = sim_factory()
    with client_for(sim, "web", token="not-the-right-token-42") as client:
        with pytest.raises(E.AuthenticationError):
            client.balance()
    assert [r.method for r in sim.state.requests if r.path.endswith("/point")] == ["POST"]


@pytest.mark.parametrize("padding", [("", "\n"), (" ", " \r\n"), ("\t", "")])
def test_a_pasted_token_is_stripped(
    api: str, padding: tuple[str, str], sim: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vance_provider")
    token = TOKENS[api]
    with client_for(sim, api, token=padding[0] + token + padding[1], retry=TWICE) as client:
        assert client.balance().available == 1000.0
    said = [r.getMessage() for r in caplog.records if "stripped" in r.getMessage()]
    assert said and all(token not in m for m in said)
    assert all(r.status == 200 for r in sim.state.requests)


# The polling pace is the client's own rule about the answers it gets: canned answers
# (httpx.MockTransport) show it as well as a simulator would, without a job to upload and run.
def running_job_client(
    api: str, *, retry_after: str | None = None, media: str = "image"
) -> tuple[VanceClient, list[httpx.Request], list[float]]:
    """A client whose every answer about job ``job_1`` says it is running (with ``Retry-After``
    when given) until it is canceled, the requests it sent, and the waits it asked for (none is
    really waited)."""
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        headers = {"Retry-After": retry_after} if retry_after else {}
        canceled = any(r.url.path.endswith("/cancel") for r in sent)
        if canceled:
            return httpx.Response(200, json={"job_id": "job_1", "status": "canceled", "media": media})
        if api == "web":
            return httpx.Response(200, json={"code": 200, "data": {"status": "process"}}, headers=headers)
        body = {
            "job_id": "job_1",
            "status": "processing",
            "phase": "processing",
            "progress": 10,
            "tool": "upscale" if media == "image" else "video_upscale",
            "media": media,
            "result_url": None,
            "result": None,
            "error": None,
            "credits_estimated": 1.0,
            "credits_charged": 1.0,
            "created_at": "2026-01-01T00:00:00Z",
            "finished_at": None,
        }
        return httpx.Response(200, json=body, headers=headers)

    client = VanceClient(
        TOKENS[api], api=api, base_url="http://vance.test", retry=FAST, transport=httpx.MockTransport(answer)
    )
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    client.aio.backend._sleep = no_sleep  # type: ignore[method-assign]
    return client, sent, waits


def test_poll_answers_with_retry_after_set_the_next_poll(api: str) -> None:
    """``Retry-After`` on a job status answer (HTTP 200, not a 429) is a hint for the next poll:
    the client waits that long before asking about the job again, whichever loop polls."""
    client, sent, waits = running_job_client(api, retry_after="7")
    with client:
        backend = client.aio.backend
        job = client.get_job("job_1")
        assert not job.status.terminal and waits == []
        assert 6.0 < backend.next_poll_in(job.id) <= 7.0
        client.get_job(job.id)
        assert len(waits) == 1 and 6.0 < waits[0] <= 7.0
        assert backend.next_poll_in("someone-else") == 0.0
    assert len(sent) == 2


def test_polls_without_a_hint_are_not_slowed(api: str) -> None:
    client, _, waits = running_job_client(api)
    with client:
        job = client.get_job("job_1")
        assert not job.status.terminal and client.aio.backend.next_poll_in(job.id) == 0.0
        client.get_job(job.id)
    assert waits == []


def test_video_jobs_are_polled_on_the_slower_schedule() -> None:
    """The Open API suggests 5-10 s between polls of a video (about 2 s for an image)."""
    client, sent, waits = running_job_client("open", media="video")
    with client:
        backend = client.aio.backend
        job = client.get_job("job_1")
        assert job.media == "video" and not job.status.terminal
        assert backend.video_poll_interval - 1 < backend.next_poll_in(job.id) <= backend.video_poll_interval
        client.get_job(job.id)
        client.cancel(job.id)  # a cancel looks at the job at once: not paced
        assert len(waits) == 1 and backend.video_poll_interval - 1 < waits[0] <= backend.video_poll_interval
        assert backend.next_poll_in(job.id) == 0.0  # canceled: terminal, nothing to wait for
    assert "/api/v1/jobs/job_1/cancel" in [r.url.path for r in sent]
