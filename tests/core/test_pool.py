"""The pool's check of idle connections, answered from the socket each stream keeps: the same
verdicts as httpcore's own (a connection the server closed is not used again), without anyio's
table of socket attributes."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpcore
import httpx
import pytest

from vance_provider.core import VanceClient
from vance_provider.core.transport import pool
from vance_provider.sim import SimulatorServer


def test_readable_tells_data_an_end_and_a_closed_socket() -> None:
    a, b = socket.socketpair()
    try:
        assert not pool.readable(a)  # nothing to read: an idle connection the server keeps
        b.send(b"x")
        assert pool.readable(a)
        a.recv(1)
        b.close()
        assert pool.readable(a)  # the peer closed: a read returns the end at once
    finally:
        a.close()
    assert pool.readable(a) and pool.readable(None)  # gone: counted as closed


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every answer :func:`pool.readable` gave, in order."""
    answers: list[bool] = []
    readable = pool.readable

    def counted(sock: socket.socket | None) -> bool:
        answers.append(readable(sock))
        return answers[-1]

    monkeypatch.setattr(pool, "readable", counted)
    return answers


@pytest.fixture
async def closing_server() -> AsyncIterator[tuple[str, list[int], asyncio.Event]]:
    """A loopback HTTP server that answers one request per connection with keep-alive, then
    closes the connection (as a server does at its idle timeout) and sets the event."""
    connections: list[int] = []
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections) + 1)
        await reader.readuntil(b"\r\n\r\n")
        body = str(len(connections)).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}/", connections, closed


async def test_a_connection_the_server_closed_is_not_used_again(
    closing_server: tuple[str, list[int], asyncio.Event], asked: list[bool]
) -> None:
    url, connections, closed = closing_server
    async with httpx.AsyncClient() as http:
        assert pool.install(http)
        assert (await http.get(url)).text == "1"
        await closed.wait()  # the server has closed the idle connection
        assert (await http.get(url)).text == "2"  # a new connection, not an error on the old one
    assert connections == [1, 2]
    assert True in asked  # the pool asked this module, and was told the old one was closed


async def test_install_applies_once_and_only_to_httpx_own_pool() -> None:
    async with httpx.AsyncClient() as http:
        assert pool.install(http) and not pool.install(http)
    mocked = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200)))
    async with mocked:
        assert not pool.install(mocked)


def test_the_client_checks_its_idle_connections_here(
    sim: SimulatorServer, client_factory: Callable[..., VanceClient], asked: list[bool]
) -> None:
    client = client_factory(sim, "open")
    client.balance()
    client.balance()  # the first one's connection is idle in the pool, and asked about here
    assert asked and not any(asked)  # the simulator keeps it open: it is used again


class _Recorded(httpcore.AsyncNetworkStream):
    """An inner stream that records what each read asked for."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.asked.append(max_bytes)
        return b"x"

    def get_extra_info(self, info: str) -> Any:
        return None


async def test_a_connection_is_read_in_pieces_of_256_kib() -> None:
    inner = _Recorded()
    stream = pool._Stream(inner)
    await stream.read(64 * 1024)  # what httpcore asks
    await stream.read(1 << 20)
    assert inner.asked == [pool.READ_BYTES, 1 << 20] and pool.READ_BYTES == 256 * 1024


async def test_a_big_answer_arrives_whole_through_the_streams() -> None:
    body = random.Random(5).randbytes(3_000_000)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, httpx.AsyncClient() as http:
        assert pool.install(http)
        response = await http.get(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
        assert response.content == body
