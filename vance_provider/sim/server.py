"""Run the simulator on a loopback port in a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.requests import ClientDisconnect

from .app import create_app
from .config import SimConfig
from .state import SimState


class _QuietInjectedFaults(logging.Filter):
    """Injected drops and truncations are on purpose: keep their tracebacks out of the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, (ConnectionAbortedError, ClientDisconnect))


logging.getLogger("uvicorn.error").addFilter(_QuietInjectedFaults())


class SimulatorServer:
    """A real HTTP server speaking both VanceAI APIs.

    >>> with SimulatorServer(SimConfig()) as sim:
    ...     sim.base_url  # 'http://127.0.0.1:<port>'
    ...     sim.state.ledger  # every reservation, confirmation, refund and charge
    """

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.state = SimState(self.config)
        self.app = create_app(state=self.state)
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, log_level="warning", access_log=False, timeout_keep_alive=30, lifespan="on"
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def web_url(self) -> str:
        return f"{self.base_url}/web_api/v1"

    @property
    def open_url(self) -> str:
        return f"{self.base_url}/api/v1"

    def start(self) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="vance-sim", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the VanceAI simulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
        self.state.close()

    def serve_forever(self) -> None:
        self._server.run(sockets=[self._sock])

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
