"""Connections read in bigger pieces, and a cheaper answer to the connection pool's question "has
the server closed this idle connection?".

Before and after each request, httpcore's pool asks it of every idle connection it holds. Its
asyncio streams answer through anyio, which builds the socket's whole table of attributes (a
``getpeername()`` system call among them) to hand over the socket that is then polled: ~25 µs a
connection. A batch keeps some 30 connections to the service (16 uploads in flight, the polls
and the downloads), so each of its requests paid ~0.8 ms for the question, more than the rest of
a poll's own work. The streams here keep their socket from the start and poll it: the same
check, without the table. They also read a connection in pieces of 256 KiB, not 64 (``READ_BYTES``).

    install(http)  # an httpx.AsyncClient on its default transport; False where it cannot apply
"""

from __future__ import annotations

import select
import socket
import ssl
import sys
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


def readable(sock: socket.socket | None) -> bool:
    """Whether a read of ``sock`` would return at once (data, or the end of a closed connection);
    ``True`` for a socket that is gone (as httpcore counts one)."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    if sys.platform == "win32" or not hasattr(select, "poll"):
        return bool(select.select([fd], [], [], 0)[0])
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


#: What a read of a connection asks for. asyncio takes up to 256 KiB from the socket at once; when
#: httpcore asked for its 64 KiB, anyio handed that out in four pieces, copying the rest each time,
#: and each piece went up through httpcore, h11 and httpx on its own: a 6 MB result took ~10 ms of
#: CPU, now ~6. (httpcore's HTTP/1.1 parser takes any amount a read returns.)
READ_BYTES = 256 << 10


class _Stream(httpcore.AsyncNetworkStream):
    """A network stream that reads up to ``READ_BYTES`` at once and keeps its socket:
    ``is_readable`` polls it directly."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket = stream.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # Up to READ_BYTES whatever httpcore asks (64 KiB): see the module docstring.
        return await self._stream.read(max(max_bytes, READ_BYTES), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return readable(self._socket)
        return self._stream.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    """httpcore's own network backend, its streams wrapped in :class:`_Stream`."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(
            await self._backend.connect_tcp(
                host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
            )
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(
            await self._backend.connect_unix_socket(path, timeout=timeout, socket_options=socket_options)
        )

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def install(http: httpx.AsyncClient) -> bool:
    """Give ``http``'s default transport (direct connections: not a proxy's, not one injected)
    the streams of this module. ``False``, and nothing changed, where that transport is not the
    one httpx builds from httpcore's connection pool (a test's mock transport, another version)."""
    pool = getattr(getattr(http, "_transport", None), "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool:
        return False
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.AsyncNetworkBackend) or isinstance(backend, _Backend):
        return False
    pool._network_backend = _Backend(backend)
    return True


__all__ = ["install", "readable"]
