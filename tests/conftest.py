"""Shared fixtures: a running simulator on loopback and real image/video files."""

from __future__ import annotations

import fcntl
import functools
import io
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

# Tests share no account state through the user's own store (~/.local/state/vance): each test
# that shares an account names its own store.
os.environ.setdefault("VANCE_ACCOUNT_STORE", "none")

from vance_provider.sim import DEMO_OPEN_KEY, DEMO_WEB_TOKEN, SimConfig, SimulatorServer
from vance_provider.sim.processing import make_test_video

WEB_TOKEN = DEMO_WEB_TOKEN
OPEN_KEY = DEMO_OPEN_KEY


def as_from_a_terminal() -> None:
    """``preexec_fn`` of a process a test sends Ctrl-C (SIGINT): the signal as a terminal gives it.
    A child inherits an ignored SIGINT (a shell's background job, ``nohup``, code run earlier in this
    pytest process), and Python then never turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def image_bytes(width: int = 64, height: int = 48, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A small real image with some structure (so filters visibly change it)."""
    img = Image.new(mode, (width, height), "white" if mode != "L" else 255)
    draw = ImageDraw.Draw(img)
    draw.ellipse(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill="red" if mode != "L" else 80
    )
    draw.line((0, 0, width, height), fill="blue" if mode != "L" else 0, width=2)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "in.jpg", width: int = 64, height: int = 48, mode: str = "RGB") -> Path:
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[-1].lower()]
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(width, height, fmt, mode))
        return path

    return make


@pytest.fixture(scope="session")
def test_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", 64, 48, seconds=1.0, fps=10)


def fast_config(**overrides: object) -> SimConfig:
    """Simulator settings for tests: short delays, no faults."""
    base: dict[str, object] = {
        "queue_delay": 0.02,
        "time_per_job": 0.05,
        "time_per_video_second": 0.05,
        "tick": 0.01,
    }
    base.update(overrides)
    return SimConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def sim_config() -> SimConfig:
    """Override this fixture (or use ``sim_factory``) to change knobs."""
    return fast_config()


# A simulator takes ~0.2 s to stop (uvicorn's shutdown tick): stop it in the background, so the
# next test need not wait, and join all of them at the end of the session.
_stopping: list[threading.Thread] = []


def _stop_later(server: SimulatorServer) -> None:
    thread = threading.Thread(target=server.stop, name="vance-sim-stop", daemon=True)
    thread.start()
    _stopping.append(thread)


@pytest.fixture(scope="session", autouse=True)
def _join_stopping_simulators() -> Iterator[None]:
    yield
    for thread in _stopping:
        thread.join(timeout=15)


@pytest.fixture
def sim(sim_config: SimConfig) -> Iterator[SimulatorServer]:
    server = SimulatorServer(sim_config).start()
    yield server
    _stop_later(server)


@pytest.fixture
def sim_factory() -> Iterator[Callable[..., SimulatorServer]]:
    """Start extra simulators with their own knobs: ``sim_factory(rate_limit=5)``."""
    started: list[SimulatorServer] = []

    def factory(**overrides: object) -> SimulatorServer:
        server = SimulatorServer(fast_config(**overrides)).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        _stop_later(server)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    pytest.importorskip("s3fs")
    import botocore.session
    from moto.server import ThreadedMotoServer

    # botocore parses S3's service model and endpoint rules (megabytes of JSON) once per session,
    # and s3fs starts a session per filesystem: the suite parsed them again in nearly every S3 test
    # (about 8 % of its CPU). The sessions of the test process share one loader, as the clients of
    # one session share theirs.
    shared_loader = pytest.MonkeyPatch()
    shared_loader.setattr(botocore.session, "create_loader", functools.cache(botocore.session.create_loader))

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        shared_loader.undo()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket(endpoint: str, name: str) -> str:
    """Create the bucket ``name`` on the S3 server at ``endpoint`` (moto); returns the name."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_server: str, request: pytest.FixtureRequest) -> Iterator[tuple[Any, dict[str, Any], str]]:
    """(s3fs filesystem, storage_options, bucket): a fresh bucket per test on the moto server."""
    import s3fs

    options: dict[str, Any] = {
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"},
        "key": "testing",
        "secret": "testing",
    }
    name = re.sub(r"[^a-z0-9-]", "-", f"t-{request.node.name.lower()}")[:40].strip("-")
    bucket = make_bucket(s3_server, f"{name}-{uuid.uuid4().hex[:6]}")
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    yield fs, options, bucket


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook has named the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--dist loadgroup``: pytest-xdist (3.8) names a test's ``xdist_group`` by a suffix on the
    item's legacy ``_nodeid``, which pytest 9.2's structured node ids no longer read, so each group
    was spread over all the workers (the demo ran once per worker). Give the suffix to the id pytest
    reads; where xdist's suffix already took effect this does nothing."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest before structured node ids: the suffix works as it is
        return
    for item in items:
        legacy = item.__dict__.get("_nodeid")
        if isinstance(legacy, str) and legacy != item.nodeid and hasattr(item, "_id"):
            item._id = NodeId.parse(legacy)


def run_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's temporary folder: under pytest-xdist, the one above every worker's own, which
    all the run's workers share (pytest's basetemp otherwise)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


# --- Airflow's metadata DB -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pristine_airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite metadata DB as ``airflow db migrate`` leaves it, migrated once per test run: the
    pytest-xdist workers of a run share it (the first to ask migrates, under a file lock; the others
    wait for it). Copy it, never open it: whoever needs a metadata DB starts from a copy."""
    root = run_temp_dir(tmp_path_factory)
    target = root / "airflow-migrated.db"
    with open(root / "airflow-migrated.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            home = root / "airflow-migrate-home"
            home.mkdir(exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
            env.update(
                {
                    "AIRFLOW_HOME": str(home),
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                }
            )
            proc = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"],
                capture_output=True,
                text=True,
                env=env,
                timeout=240,
            )
            if proc.returncode:
                raise RuntimeError(
                    f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                )
            partial = root / "airflow-migrated.db.partial"
            with (
                closing(sqlite3.connect(home / "airflow.db")) as db,
                closing(sqlite3.connect(partial)) as copy,
            ):
                db.backup(copy)  # the WAL's pages too, if the migration left any
            partial.rename(target)
    return target
