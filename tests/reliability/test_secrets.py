"""The token never appears in a URL, a log line (httpx/httpcore debug included), an exception,
a repr, a manifest or a report."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.core import AsyncVanceClient, BatchSpec, VanceClient, write_report
from vance_provider.core.api import errors as E
from vance_provider.sim import Account, SimConfig, SimulatorServer


@pytest.mark.parametrize("api,token", [("web", WEB_TOKEN), ("open", OPEN_KEY)])
def test_token_never_leaks(
    api: str, token: str, sim: Any, make_image: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "vance_provider", "fsspec"):
        caplog.set_level(logging.DEBUG, logger=name)  # put back after the test, as the root's is
    make_image("in/a.jpg")
    make_image("in/b.png")
    with VanceClient(token, base_url=sim.base_url) as client:
        texts = [repr(client), str(client), repr(client.aio), repr(client.aio.backend)]
        result = client.run_batch(
            BatchSpec(
                str(tmp_path / "in"), str(tmp_path / "out"), "upscale", {"scale": 2}, poll_interval=0.05
            )
        )
        report = write_report(client.usage_report([result.manifest]), str(tmp_path / "usage.csv"))
        texts += [repr(result), str(result.summary()), repr(client.balance())]
    assert result.done == 2
    # Requests were made and logged at debug level: the check below has something to look at.
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)
    assert len(sim.state.requests) >= 6
    for r in sim.state.requests:
        assert token not in r.url
    for record in caplog.records:
        assert token not in record.getMessage()
    texts += [Path(result.manifest).read_text(), Path(report).read_text()]
    for text in texts:
        assert token not in text


def test_the_check_is_meaningful(sim: Any) -> None:
    """A URL with ?api_token= does show the token in the request log: the log would catch a leak."""
    import httpx

    httpx.get(f"{sim.base_url}/web_api/v1/point", params={"api_token": WEB_TOKEN})
    assert any(WEB_TOKEN in r.url for r in sim.state.requests)


@pytest.mark.parametrize("token", ["not-the-right-token-42", "sk_live_not_the_right_key_42"])
def test_errors_never_carry_the_token(token: str, sim: Any) -> None:
    with VanceClient(token, base_url=sim.base_url) as client:
        with pytest.raises(E.AuthenticationError) as info:
            client.balance()
    rendered = "".join(traceback.format_exception(info.value))
    assert token not in rendered and token not in repr(info.value)
    assert "token" in str(info.value).lower() or "key" in str(info.value).lower()


async def test_async_client_repr_and_insufficient_credits(tmp_path: Path, make_image: Any) -> None:
    config = SimConfig(accounts=[Account(credits=0)], queue_delay=0.01, time_per_job=0.02, tick=0.01)
    with SimulatorServer(config) as sim:
        async with AsyncVanceClient(OPEN_KEY, base_url=sim.base_url) as client:
            assert OPEN_KEY not in repr(client)
            with pytest.raises(E.InsufficientCreditsError) as info:
                await client.submit(str(make_image("x.jpg")), "upscale", {"scale": 2})
    assert OPEN_KEY not in "".join(traceback.format_exception(info.value))


# A token with the characters a URL or a form encodes (+ / = and a space): the GET `point`
# fallback puts it in a query string, where it appears percent-encoded.
ENCODED_TOKEN = "web+tok/en==with signs0123456789"


@pytest.mark.parametrize("refusal", ["405", "illegal_parameter"])
def test_a_percent_encoded_token_never_leaks(refusal: str, caplog: pytest.LogCaptureFixture) -> None:
    from urllib.parse import quote, quote_plus

    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "vance_provider"):
        caplog.set_level(logging.DEBUG, logger=name)  # put back after the test, as the root's is
    config = SimConfig(
        accounts=[Account(web_tokens=[ENCODED_TOKEN])],
        web_point_get_only=True,
        web_point_post_answer=refusal,
    )
    with SimulatorServer(config) as sim, VanceClient(ENCODED_TOKEN, base_url=sim.base_url) as client:
        assert client.balance().available == 1000.0
        texts = [repr(client), repr(client.aio.backend)]
    # The GET fallback did send the token in its URL, encoded: the checks below see something.
    [get] = [r for r in sim.state.requests if r.method == "GET"]
    assert quote_plus(ENCODED_TOKEN) in get.url and ENCODED_TOKEN not in get.url
    assert any("HTTP Request: GET" in r.getMessage() for r in caplog.records)  # httpx's INFO line
    forms = {
        ENCODED_TOKEN,
        quote(ENCODED_TOKEN, safe=""),
        quote_plus(ENCODED_TOKEN),
        quote_plus(ENCODED_TOKEN).lower(),
        quote(ENCODED_TOKEN, safe="/"),
        "web+tok/en==with",  # the part before the space
    }
    for text in [*(r.getMessage() for r in caplog.records), *texts]:
        for form in forms:
            assert form not in text, (form, text)
