"""The token never shows: not in logs (debug included), URLs, errors, manifests, reports or reprs."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.core.conftest import TOKENS, batch_spec
from vance_provider.core import VanceClient, write_report
from vance_provider.core.api.errors import AuthenticationError
from vance_provider.sim import SimulatorServer

WRONG = {"web": "wr0ngtoken0123456789abcdef0123456", "open": "sk_live_wr0ngkey0123456789abcdef01234"}


def exception_text(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc)), repr(exc), str(exc), repr(exc.args), repr(vars(exc))]
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            parts.append(exception_text(linked))
    return "\n".join(parts)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # Through caplog only, the root ("") too: it puts each level back after the test, and the rest of
    # the session does not format a DEBUG record for every request.
    for name in (
        "",
        "httpx",
        "httpcore",
        "httpcore.http11",
        "httpcore.connection",
        "vance_provider",
        "fsspec",
        "asyncio",
    ):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def all_log_text(caplog: pytest.LogCaptureFixture) -> str:
    out = []
    for record in caplog.records:
        out.append(record.getMessage())
        out.append(repr(record.args))
        if record.exc_info:
            out.append("".join(traceback.format_exception(*record.exc_info)))
    return "\n".join(out)


def test_round_trip_keeps_the_token_secret(
    api: str,
    sim: SimulatorServer,
    debug_logs: pytest.LogCaptureFixture,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
    tmp_path: Path,
) -> None:
    token = TOKENS[api]
    client = client_factory(sim, api)
    job = client.wait(
        client.submit(str(make_image("a.jpg", 16, 12)), "upscale").id, poll_interval=0.05, timeout=20
    )
    client.download(job, str(tmp_path / "single.jpg"))
    client.balance()
    make_image("in/b.jpg", 16, 12)
    make_image("in/bad.jpg", 16, 12).write_bytes(b"junk")
    result = client.run_batch(batch_spec(str(tmp_path / "in"), str(tmp_path / "out"), on_failure="continue"))
    assert result.done == 1 and result.failed == 1
    df = client.usage_report([result.manifest])
    report = write_report(df, str(tmp_path / "usage.csv"))

    text = all_log_text(debug_logs)
    assert "HTTP Request" in text and sim.base_url in text  # the debug logs were captured, URLs included
    assert any(r.name.startswith("httpcore") for r in debug_logs.records)
    assert token not in text
    for r in sim.state.requests:
        assert token not in r.url
        assert "api_token" not in r.url  # the web token goes in the POST body
    assert Path(result.manifest).exists()
    for path in (Path(result.manifest), Path(report)):
        assert token not in path.read_text()
    assert token not in json.dumps(result.summary()) and token not in repr(result)
    assert token not in df.to_csv() and token not in repr(job) and token not in json.dumps(job.to_xcom())
    assert all(
        r.authorization == (api == "open")
        for r in sim.state.requests
        if r.path.startswith(("/api/", "/web_api/"))
    )


def test_wrong_token_is_not_in_the_exception(
    api: str,
    sim: SimulatorServer,
    debug_logs: pytest.LogCaptureFixture,
    client_factory: Callable[..., VanceClient],
    make_image: Callable[..., Path],
) -> None:
    wrong = WRONG[api]
    client = client_factory(sim, api, token=wrong)
    for call in (
        client.balance,
        lambda: client.submit(str(make_image("a.jpg", 16, 12)), "upscale"),
        lambda: client.get_job("job_x" if api == "open" else "x" * 32),
    ):
        with pytest.raises(AuthenticationError) as info:
            call()
        text = exception_text(info.value)
        assert "Traceback" in text and wrong not in text
        assert wrong[8:] not in text  # not even the part after the prefix
    assert wrong not in all_log_text(debug_logs)
    assert all(wrong not in r.url for r in sim.state.requests)
    assert wrong not in repr(client) and wrong not in repr(client.aio.backend)


def test_a_token_logged_by_the_http_libraries_is_redacted(
    api: str,
    sim: SimulatorServer,
    debug_logs: pytest.LogCaptureFixture,
    client_factory: Callable[..., VanceClient],
) -> None:
    token = TOKENS[api]
    client_factory(sim, api).balance()  # the client registers its token as a secret
    logging.getLogger("httpx").debug("request headers: Authorization: Bearer %s", token)
    logging.getLogger("httpcore").info("form api_token=%s", token)
    logging.getLogger("vance_provider").warning(f"oops {token}")
    text = all_log_text(debug_logs)
    assert token not in text
    assert text.count("***") >= 3
