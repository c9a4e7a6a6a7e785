"""Fixtures of the simulator protocol tests: httpx clients bound to a running simulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import fast_config
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


# One simulator per test module for tests that only check a request's own answer (validation
# errors, result contents): starting and stopping a server costs ~0.2 s, and these tests neither
# read nor disturb account-wide state (credits, ledger, limits, keys).
@pytest.fixture(scope="module")
def shared_sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(fast_config()) as server:
        yield server


@pytest.fixture(scope="module")
def shared_client(shared_sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_sim.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
def shared_web(shared_client: httpx.Client) -> Web:
    return Web(shared_client)


@pytest.fixture
def shared_api(shared_client: httpx.Client) -> Open:
    return Open(shared_client)
