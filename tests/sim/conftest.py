"""Fixtures of the simulator protocol tests: httpx clients bound to a running simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.sim.helpers import Open, Web
from vance_provider.sim import SimulatorServer


@pytest.fixture
def connect() -> Iterator[Callable[..., httpx.Client]]:
    """``connect(server)``: an ``httpx.Client`` on the server's base URL, closed after the test."""
    clients: list[httpx.Client] = []

    def make(server: SimulatorServer, timeout: float = 10.0) -> httpx.Client:
        client = httpx.Client(base_url=server.base_url, timeout=timeout)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(sim: SimulatorServer, connect: Callable[..., httpx.Client]) -> httpx.Client:
    return connect(sim)


@pytest.fixture
def web(client: httpx.Client) -> Web:
    return Web(client)


@pytest.fixture
def api(client: httpx.Client) -> Open:
    return Open(client)
