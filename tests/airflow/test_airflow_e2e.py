"""A real Airflow deployment on loopback: API server, scheduler (LocalExecutor), DAG processor and
triggerer as separate processes sharing a SQLite metadata DB, against the simulator. `make compat`
runs these on the lowest and the highest supported Airflow.

* A deferrable batch is triggered; while its task is deferred the triggerer holding the trigger is
  killed (SIGKILL). A second triggerer, started beside the first, adopts the trigger (rebuilt from
  ``serialize()``), the task resumes, and the run succeeds with every job submitted and charged
  exactly once.
* A deferred batch is marked failed through the API: its jobs are canceled (Airflow 3.3 calls the
  trigger's ``on_kill``; on 3.0-3.2 the cancelled trigger reads its task's state), nothing is
  charged, and the manifest has the items pending for the next run. The same while the trigger
  holds its event back for the resume (a batch past its deadline, jobs still in flight).

The simulator holds the jobs (their time runs on its clock) until the other triggerer has adopted
the trigger: only it can see them finish, on however slow a machine, and nobody waits for a job
time chosen to outlast the restart. The deployment starts from a copy of the session's freshly
migrated metadata DB instead of migrating its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.airflow.helpers import PRISTINE_DB, ROOT, stop_process_groups
from tests.conftest import OPEN_KEY, fast_config, image_bytes
from vance_provider.sim import SimulatorServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
E2E_DAGS = Path(__file__).resolve().parent / "e2e_dags"
DAG_ID = "vt_e2e_deferrable"
HOLD = 3600.0  # seconds of the simulator's clock a job takes until the test releases it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    def __init__(self, home: Path, sim: SimulatorServer, **settings: str) -> None:
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(port),
                "AIRFLOW__API__WORKERS": "1",
                # Each deployment's own log servers: two at once on the default ports (xdist
                # workers) left one triggerer's unbound ("address already in use").
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
                # A loaded machine (the suite beside it) answered one task call in 35 s: the
                # default 5 s timeout failed the task. (Airflow before 3.1.1 has no such option.)
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",
                "AIRFLOW__API_AUTH__JWT_SECRET": "vance-e2e-jwt-secret-0123456789abcdef",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
                "AIRFLOW_CONN_VANCEAI_DEFAULT": json.dumps(
                    {
                        "conn_type": "vanceai",
                        "password": OPEN_KEY,
                        "host": sim.base_url,
                        "extra": {"api": "open"},
                    }
                ),
                "PYTHONPATH": str(ROOT),
                **settings,
            }
        )
        self.env = env
        self.api = f"http://127.0.0.1:{port}"

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Create a DAG run through the API server, as ``airflow dags trigger`` would (without
        starting a new interpreter for it); returns its run id."""

        def post() -> str | None:
            try:
                token = httpx.get(f"{self.api}/auth/token", timeout=30).json()["access_token"]
                answer = httpx.post(
                    f"{self.api}/api/v2/dags/{dag_id}/dagRuns",
                    json={"logical_date": None, "conf": conf},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                )
            except httpx.TransportError:
                return None  # the API server is not listening yet
            assert answer.status_code == 200, answer.text
            return str(answer.json()["dag_run_id"])

        return self.wait(post, 180, "the API server to create the DAG run")

    def mark_failed(self, dag_id: str, run_id: str, task_id: str) -> None:
        """What a user's "Mark as failed" in the UI does."""
        token = httpx.get(f"{self.api}/auth/token", timeout=30).json()["access_token"]
        answer = httpx.patch(
            f"{self.api}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}",
            json={"new_state": "failed"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text

    def start(self, name: str, *args: str) -> None:
        log = (self.home / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.stop_many([name], sig)

    def stop_many(self, names: list[str], sig: int = signal.SIGTERM) -> None:
        """Signal every one first, then wait for them together (SIGKILL those still there after 20 s)."""
        stop_process_groups([self.procs.pop(name) for name in names], sig)

    def stop_all(self) -> None:
        """At the end of the test: nothing of theirs is looked at any more."""
        self.stop_many(list(self.procs), signal.SIGKILL)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.home / "airflow.db", timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if result := predicate():
                    return result
            except sqlite3.OperationalError:
                pass  # locked or not created yet
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            time.sleep(0.3)
        raise AssertionError(
            f"timed out waiting for {what}\n" + "\n".join(self.log_tail(n) for n in self.procs)
        )

    def task_log_has(self, text: str) -> bool:
        """Whether a task or trigger log (files under ``logs/dag_id=...``) has ``text``."""
        return any(
            text in p.read_text(errors="replace") for p in (self.home / "logs").glob("dag_id=*/**/*.log")
        )

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.home / f"{name}.log"
        return f"--- {name} ---\n" + (path.read_text(errors="replace")[-chars:] if path.exists() else "")


def _start_deployment(home: Path, airflow_db: Path, sim: SimulatorServer, **settings: str) -> Deployment:
    (home / "dags").mkdir(parents=True)
    shutil.copy(E2E_DAGS / f"{DAG_ID}.py", home / "dags")
    # The session's metadata DB as `airflow db migrate` left it (before any test used it).
    with (
        closing(sqlite3.connect(airflow_db / PRISTINE_DB)) as pristine,
        closing(sqlite3.connect(home / "airflow.db")) as copy,
    ):
        pristine.backup(copy)
    return Deployment(home, sim, **settings)


@pytest.fixture
def deployment(tmp_path: Path, airflow_db: Path) -> Iterator[tuple[Deployment, SimulatorServer]]:
    # The jobs run until the test moves the simulator's clock (after the triggerer restart).
    with SimulatorServer(fast_config(time_per_job=HOLD)) as sim:
        dep = _start_deployment(tmp_path / "airflow", airflow_db, sim)
        try:
            yield dep, sim
        finally:
            dep.stop_all()


def test_triggerer_restart_while_deferred(deployment, tmp_path) -> None:
    dep, sim = deployment
    for name in ("api-server", "scheduler", "dag-processor", "triggerer-a"):
        dep.start(name, name.removesuffix("-a"))
    triggerer_jobs = "select id from job where job_type = 'TriggererJob' order by id"
    dep.wait(lambda: dep.query(triggerer_jobs), 180, "the first triggerer to start")
    # A second triggerer beside it (it boots while the task runs): when the one holding the
    # trigger dies, the other adopts it.
    dep.start("triggerer-b", "triggerer")
    dep.wait(lambda: dep.query("select 1 from dag where dag_id = ?", DAG_ID), 180, "the DAG to be parsed")

    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        (src / f"p{i}.jpg").write_bytes(image_bytes(32, 24))
    run_id = dep.trigger(DAG_ID, {"source": str(src), "destination": str(dst)})

    # Deferred, and a triggerer has adopted the trigger and polled at least once.
    dep.wait(
        lambda: dep.query("select 1 from task_instance where dag_id = ? and state = 'deferred'", DAG_ID),
        180,
        "the task to defer",
    )
    first = dep.wait(
        lambda: dep.query("select triggerer_id from trigger where triggerer_id is not null"),
        60,
        "a triggerer to adopt the trigger",
    )[0][0]
    kwargs = dep.query("select kwargs from trigger")[0][0]
    assert OPEN_KEY not in str(kwargs)
    polls_before = sum(1 for r in sim.state.requests if r.method == "GET" and "/jobs/" in r.path)
    dep.wait(
        lambda: sum(1 for r in sim.state.requests if r.method == "GET" and "/jobs/" in r.path) > polls_before,
        30,
        "the triggerer to poll",
    )
    created = [r.created_job for r in sim.state.requests if r.created_job]
    assert len(created) == 3

    # Both triggerers up (their job rows, in the order they were started): which one holds it?
    def both_triggerers() -> list[int]:
        ids = [i for (i,) in dep.query(triggerer_jobs)]
        return ids if len(ids) == 2 else []

    ids = dep.wait(both_triggerers, 180, "the second triggerer to start")
    assert len(ids) == 2 and first in ids
    holder, survivor = ("triggerer-a", "triggerer-b") if first == ids[0] else ("triggerer-b", "triggerer-a")
    other = ids[1] if first == ids[0] else ids[0]

    dep.stop(holder, signal.SIGKILL)  # a crash, not a graceful shutdown
    assert all(j.status == "processing" for j in sim.state.jobs.values())  # held: still running
    dep.wait(
        lambda: dep.query("select 1 from trigger where triggerer_id = ?", other),
        120,
        "the other triggerer to adopt the trigger",
    )
    # Only now do the jobs finish: whoever sees them done is the triggerer that adopted it.
    statuses = {j.id: j.status for j in sim.state.jobs.values()}
    assert not sim.state.charges() and set(statuses.values()) == {"processing"}, f"{statuses}\n" + "\n".join(
        dep.log_tail(n) for n in ("scheduler", survivor)
    )
    sim.state.config.time_per_job = 0.05
    sim.state.clock.advance(HOLD)

    def finished() -> Any:
        return [
            s
            for (s,) in dep.query("select state from dag_run where dag_id = ?", DAG_ID)
            if s in ("success", "failed")
        ]

    states = dep.wait(finished, 240, "the DAG run to finish")
    assert dep.query("select run_id from dag_run where dag_id = ?", DAG_ID) == [(run_id,)]
    assert states == ["success"], "\n".join(dep.log_tail(n) for n in ("scheduler", survivor))
    assert dep.query("select state, try_number from task_instance where dag_id = ?", DAG_ID) == [
        ("success", 1)
    ]

    # Nothing submitted or paid twice; every output written, twice the input's size.
    assert [r.created_job for r in sim.state.requests if r.created_job] == created
    assert len(sim.state.charges()) == 3 and not sim.state.double_charges()
    outputs = sorted(p for p in dst.glob("*.jpg") if not p.name.startswith("_vance_"))  # not the preview
    assert len(outputs) == 3
    for out in outputs:
        with Image.open(out) as img:
            assert img.size == (64, 48)


def _inputs(tmp_path: Path, n: int) -> tuple[Path, Path]:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(n):
        (src / f"p{i}.jpg").write_bytes(image_bytes(32, 24))
    return src, dst


def _assert_stopped_and_pending(dep: Deployment, sim: SimulatorServer, dst: Path, dag_id: str) -> None:
    """Every job canceled, nothing charged, the task failed, every item pending in the manifest."""
    from vance_provider.core.state.manifest import ItemState, Manifest

    def all_canceled() -> bool:
        jobs = list(sim.state.jobs.values())
        return bool(jobs) and all(j.status == "canceled" for j in jobs)

    dep.wait(all_canceled, 120, "the batch's jobs to be canceled")
    assert not sim.state.charges()
    assert dep.query("select state from task_instance where dag_id = ?", dag_id) == [("failed",)]
    manifest = Manifest.for_destination(str(dst)).load()
    canceled = set(sim.state.jobs)

    def pending() -> bool:
        items = Manifest.for_destination(str(dst)).load().items.values()
        return all(i.state == ItemState.PENDING and i.job_id not in canceled for i in items)

    # The manifest is written by the trigger's cancel right after the cancel requests.
    dep.wait(pending, 180, "the canceled items to be pending in the manifest")
    assert len(manifest.items) == len(canceled)


def _wait_deferred_and_polled(dep: Deployment, sim: SimulatorServer, dag_id: str) -> None:
    dep.wait(
        lambda: dep.query("select 1 from task_instance where dag_id = ? and state = 'deferred'", dag_id),
        180,
        "the task to defer",
    )
    dep.wait(
        lambda: dep.query("select triggerer_id from trigger where triggerer_id is not null"),
        60,
        "a triggerer to adopt the trigger",
    )
    polls = sum(1 for r in sim.state.requests if r.method == "GET" and "/jobs/" in r.path)
    dep.wait(
        lambda: sum(1 for r in sim.state.requests if r.method == "GET" and "/jobs/" in r.path) > polls,
        60,
        "the triggerer to poll",
    )


def test_marked_failed_while_deferred(deployment, tmp_path) -> None:
    dep, sim = deployment
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        dep.start(name, name)
    dep.wait(lambda: dep.query("select 1 from dag where dag_id = ?", DAG_ID), 180, "the DAG to be parsed")
    src, dst = _inputs(tmp_path, 3)
    run_id = dep.trigger(DAG_ID, {"source": str(src), "destination": str(dst)})
    _wait_deferred_and_polled(dep, sim, DAG_ID)
    assert len(sim.state.jobs) == 3 and all(j.status == "processing" for j in sim.state.jobs.values())

    dep.mark_failed(DAG_ID, run_id, "enhance")
    _assert_stopped_and_pending(dep, sim, dst, DAG_ID)


def test_marked_failed_during_the_resume_hold(tmp_path, airflow_db) -> None:
    """The batch passes its 3 s deadline with its jobs in flight; the trigger holds the timeout event
    (here for up to a minute, [vanceai] resume_after_deferral) and the user marks the task failed."""
    dag_id = "vt_e2e_deadline"
    with SimulatorServer(fast_config(time_per_job=HOLD)) as sim:
        dep = _start_deployment(
            tmp_path / "airflow", airflow_db, sim, AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL="3600"
        )
        try:
            for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
                dep.start(name, name)
            dep.wait(
                lambda: dep.query("select 1 from dag where dag_id = ?", dag_id), 180, "the DAG to be parsed"
            )
            src, dst = _inputs(tmp_path, 3)
            run_id = dep.trigger(dag_id, {"source": str(src), "destination": str(dst)})
            dep.wait(lambda: dep.task_log_has("the task resumes at"), 120, "the trigger to hold its event")
            assert len(sim.state.jobs) == 3 and all(j.status == "processing" for j in sim.state.jobs.values())
            dep.mark_failed(dag_id, run_id, "enhance")
            _assert_stopped_and_pending(dep, sim, dst, dag_id)
        finally:
            dep.stop_all()
