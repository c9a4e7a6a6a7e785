"""Fixtures of the VisionCraft tests: the simulator on loopback and clients bound to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from vance_provider.core import RetryPolicy, VanceClient
from vance_provider.sim import DEMO_VISIONCRAFT_PREMIUM_TOKEN, DEMO_VISIONCRAFT_TOKEN, SimulatorServer

FREE = DEMO_VISIONCRAFT_TOKEN
PREMIUM = DEMO_VISIONCRAFT_PREMIUM_TOKEN
FAST_RETRY = RetryPolicy(max_attempts=6, initial=0.01, max_delay=0.05)


@pytest.fixture
def vc_factory(sim: SimulatorServer) -> Iterator[Callable[..., VanceClient]]:
    """``vc_factory(token=FREE, server=sim, **kwargs)``: a VisionCraft client, closed after the test."""
    made: list[VanceClient] = []

    def make(token: str = FREE, server: SimulatorServer | None = None, **kwargs: object) -> VanceClient:
        kwargs.setdefault("retry", FAST_RETRY)
        client = VanceClient(token, api="visioncraft", base_url=(server or sim).base_url, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def vc(vc_factory: Callable[..., VanceClient]) -> VanceClient:
    return vc_factory()


@pytest.fixture
def http(sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=30) as client:
        yield client


def posts(sim: SimulatorServer, path: str | None = None) -> list[str]:
    """Paths of the POSTs the simulator received (generation requests)."""
    return [r.path for r in sim.state.requests if r.method == "POST" and (path is None or r.path == path)]
