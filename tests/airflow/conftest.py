"""A real Airflow 3.3 for the provider's tests: a temporary AIRFLOW_HOME, a migrated SQLite
metadata DB, the example DAGs plus test DAGs in the DAG folder, and the ``vanceai_default``
connection pointing at the simulator through ``AIRFLOW_CONN_VANCEAI_DEFAULT``.

The environment is set when this module is imported, before anything imports Airflow (the
``tests/airflow`` conftest is collected before any test module of the directory). We do not use
``[core] unit_test_mode``: it swaps the whole configuration for Airflow's own test config
(pointing at Airflow's test folders) - explicit env settings are enough.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = ROOT / "dags"
TEST_DAGS = Path(__file__).resolve().parent / "dag_files"

if "airflow" in sys.modules:  # pragma: no cover - someone imported Airflow before this conftest
    sys.stderr.write("tests/airflow: Airflow was imported before its test environment was set up\n")

# One home per test process, even if this module were imported twice. Under pytest-xdist each
# worker has its own (a worker inherits the environment of the process that started it, which may
# have imported this module too): a home found in the environment is ours only if this process
# made it.
if os.environ.get("VANCE_TEST_AIRFLOW_HOME_PID") != str(os.getpid()):
    os.environ["VANCE_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="vance-airflow-home-")
    os.environ["VANCE_TEST_AIRFLOW_HOME_PID"] = str(os.getpid())
    atexit.register(shutil.rmtree, os.environ["VANCE_TEST_AIRFLOW_HOME"], True)
HOME = Path(os.environ["VANCE_TEST_AIRFLOW_HOME"])
DAGS_FOLDER = HOME / "dags"
os.environ.update(
    {
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
        "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # dag.test() has no executor to report a deferring worker's exit late: no wait before a
        # resume (the deployment tests start Airflow without this, so they wait as users do).
        "AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL": "0",
    }
)
os.environ.pop("AIRFLOW_CONN_VANCEAI_DEFAULT", None)
# OpenLineage events (when the provider is installed) go to a file the lineage tests read.
OPENLINEAGE_EVENTS = HOME / "openlineage-events.jsonl"
os.environ["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
    {"type": "file", "log_file_path": str(OPENLINEAGE_EVENTS), "append": True}
)
os.environ["AIRFLOW__OPENLINEAGE__NAMESPACE"] = "vance-tests"


def _populate_dags_folder() -> None:
    DAGS_FOLDER.mkdir(parents=True, exist_ok=True)
    for folder in (EXAMPLE_DAGS, TEST_DAGS):
        for path in folder.glob("*.py"):
            shutil.copy(path, DAGS_FOLDER / path.name)


_populate_dags_folder()

from tests.airflow.helpers import PRISTINE_DB  # noqa: E402
from tests.conftest import OPEN_KEY, WEB_TOKEN, make_bucket  # noqa: E402

TOKENS = {"open": OPEN_KEY, "web": WEB_TOKEN}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` the Airflow tests not marked slow share one worker: a worker pays
    for importing and starting Airflow (~3 s of CPU) at its first Airflow test, and no test module
    imports it at collection, so the other workers never do."""
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("airflow"))


@pytest.fixture(scope="session")
def airflow_db(pristine_airflow_db: Path) -> Path:
    """The session's metadata DB, a copy of the run's freshly migrated one (the end-to-end
    deployments start from a copy of it too), then the ``vanceai`` pool."""
    for name in ("airflow.db", PRISTINE_DB):
        with (
            closing(sqlite3.connect(pristine_airflow_db)) as pristine,
            closing(sqlite3.connect(HOME / name)) as copy,
        ):
            pristine.backup(copy)
    from airflow.models.pool import Pool

    Pool.create_or_update_pool(
        "vanceai", slots=64, description="VanceAI account concurrency", include_deferred=True
    )
    return HOME


@pytest.fixture(autouse=True)
def _airflow_db_for_runs(request: pytest.FixtureRequest) -> None:
    """The metadata DB for the tests marked slow: those run DAGs (``dag.test()``) or deployments.
    The others drive operators, triggers and hooks directly and never open it, so `make test-fast`
    migrates none (a test that needs it and is not slow asks for ``airflow_db``)."""
    if request.node.get_closest_marker("slow"):
        request.getfixturevalue("airflow_db")


@pytest.fixture(scope="session", autouse=True)
def _openlineage_pool_shut_down() -> Iterator[None]:
    """OpenLineage's listener sends DAG-run events from a process pool of its own, shut down by the
    interpreter's exit hooks; a pytest-xdist worker ends without them, and the pool's processes were
    left behind, each waiting for work that never comes. Shut it down at the end of the session."""
    yield
    listener = sys.modules.get("airflow.providers.openlineage.plugins.listener")
    if listener is None:
        return
    instance = listener.get_openlineage_listener()
    executor = getattr(instance, "_executor", None)
    if executor is not None:
        instance._executor = None
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def vance_conn(sim: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """``vance_conn("open")`` points ``vanceai_default`` at the simulator; returns the token."""

    def configure(
        api: str = "open",
        *,
        token: str | None = None,
        conn_id: str = "vanceai_default",
        server: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        token = token if token is not None else TOKENS[api]
        conn = {
            "conn_type": "vanceai",
            "password": token,
            "host": (server or sim).base_url,
            "extra": {"api": api, "timeout": 10, "max_retries": 2, **(extra or {})},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return token

    return configure


@pytest.fixture
def trigger_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The class names of the VanceAI triggers run (``dag.test()`` runs them in-process)."""
    from vance_provider.triggers import vanceai as module

    runs: list[str] = []
    original = module._VanceAITrigger.run

    async def run(self: Any) -> Any:
        runs.append(type(self).__name__)
        async for event in original(self):
            yield event

    monkeypatch.setattr(module._VanceAITrigger, "run", run)
    return runs


@pytest.fixture
def bucket(s3_server: str) -> str:
    return make_bucket(s3_server, f"vance-conn-{uuid.uuid4().hex[:10]}")


@pytest.fixture
def s3fs_plain(s3_server: str) -> Any:
    """A filesystem of the test's own (not the connection's) to put inputs and look at outputs."""
    import s3fs

    return s3fs.S3FileSystem(
        key="testing",
        secret="testing",
        client_kwargs={"endpoint_url": s3_server, "region_name": "us-east-1"},
        skip_instance_cache=True,
    )
