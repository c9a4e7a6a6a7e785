"""Fixtures of the core engine tests: clients bound to a running simulator (the S3 bucket fixture ``s3``
is in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OPEN_KEY, WEB_TOKEN
from vance_provider.core import AsyncVanceClient, BatchSpec, RetryPolicy, VanceClient
from vance_provider.sim import SimulatorServer

TOKENS = {"web": WEB_TOKEN, "open": OPEN_KEY}
# Retries as the default policy does them, only with tiny delays (Retry-After is still honoured).
FAST_RETRY = RetryPolicy(max_attempts=10, initial=0.01, max_delay=0.05)
# A running video is polled every 5 s at most (the Open API's advice for minutes-long renders); the
# simulator's clips take a fraction of a second. tests/reliability/test_protocol.py checks the pace.
FAST_VIDEO_POLL = 0.05


@pytest.fixture(params=["web", "open"])
def api(request: pytest.FixtureRequest) -> str:
    """Run the test once per VanceAI API."""
    return str(request.param)


@pytest.fixture
def token(api: str) -> str:
    return TOKENS[api]


@pytest.fixture
def client_factory() -> Iterator[Callable[..., VanceClient]]:
    """``client_factory(server, api, **kwargs)``: a blocking client on the simulator, closed after the test."""
    clients: list[VanceClient] = []

    def make(server: SimulatorServer, api: str, **kwargs: Any) -> VanceClient:
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("base_url", server.base_url)
        token = kwargs.pop("token", TOKENS[api])
        client = VanceClient(token, **kwargs)
        client.aio.backend.video_poll_interval = FAST_VIDEO_POLL
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def async_client(server: SimulatorServer, api: str, **kwargs: Any) -> AsyncVanceClient:
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("retry", FAST_RETRY)
    kwargs.setdefault("base_url", server.base_url)
    client = AsyncVanceClient(kwargs.pop("token", TOKENS[api]), **kwargs)
    client.backend.video_poll_interval = FAST_VIDEO_POLL
    return client


@pytest.fixture
def client(sim: SimulatorServer, api: str, client_factory: Callable[..., VanceClient]) -> VanceClient:
    return client_factory(sim, api)


def batch_spec(
    source: str | list[str],
    destination: str,
    tool: str = "upscale",
    config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> BatchSpec:
    """A batch with fast polling (the simulator's jobs take a few tens of milliseconds)."""
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("max_poll_interval", 0.2)
    kwargs.setdefault("timeout", 60)
    if config is None and tool == "upscale":
        config = {"scale": 2}
    return BatchSpec(source=source, destination=destination, tool=tool, config=config, **kwargs)


def image_size(path: str | Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.size
