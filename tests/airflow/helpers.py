"""Helpers of the Airflow tests: load a DAG from the test DAG folder, read XComs, states, events.

Kept apart from ``conftest.py`` (which sets up the environment when pytest loads it) so test
modules can import them without running that setup twice.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = ROOT / "dags"
# A copy of the session's metadata DB as `airflow db migrate` left it, in the session's home: the
# end-to-end deployment starts from it instead of migrating its own.
PRISTINE_DB = "airflow-migrated.db"


def installed(distribution: str) -> bool:
    """Whether ``distribution`` is installed, known without importing it: collecting a test module
    imports no Airflow, so only the worker that runs the Airflow tests pays for it."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


NEEDS_AMAZON = pytest.mark.skipif(
    not installed("apache-airflow-providers-amazon"), reason="needs apache-airflow-providers-amazon"
)


def dagbag_class() -> Any:
    """``DagBag`` (it moved to ``airflow.dag_processing.dagbag`` in Airflow 3.1)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.0
        from airflow.models.dagbag import DagBag
    return DagBag


def load_dag(dag_id: str) -> Any:
    """Parse the DAG's file from the DAG folder afresh (tests may change its tasks)."""
    DagBag = dagbag_class()
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{dag_id}.py"
    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def xcom(dr: Any, task_id: str, key: str = "return_value", map_index: int | None = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id, key=key, map_indexes=map_index
        )
        rows = session.scalars(query).all()
        values = [XComModel.deserialize_value(r) for r in sorted(rows, key=lambda r: r.map_index)]
    if map_index is None:
        return values
    return values[0] if values else None


def all_xcoms(dr: Any) -> list[tuple[str, str, Any]]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id)).all()
        return [(r.task_id, r.key, XComModel.deserialize_value(r)) for r in rows]


def ti_states(dr: Any) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = dr.get_task_instances(session=session)
        return {(t.task_id if t.map_index < 0 else f"{t.task_id}[{t.map_index}]"): str(t.state) for t in tis}


def rendered_fields(dr: Any) -> list[Any]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(RenderedTaskInstanceFields).where(
                RenderedTaskInstanceFields.dag_id == dr.dag_id, RenderedTaskInstanceFields.run_id == dr.run_id
            )
        ).all()
        return [r.rendered_fields for r in rows]


def asset_events(dr: Any) -> list[dict[str, Any]]:
    """The asset events a DAG run emitted: their extras, plus the asset's URI under ``"uri"``."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == dr.dag_id, AssetEvent.source_run_id == dr.run_id
            )
        ).all()
        return [{**r.extra, "uri": r.asset.uri} for r in rows]


@contextmanager
def jobs_finish_after_first_look(sim: Any, hold: float = 600.0) -> Iterator[None]:
    """The next job takes ``hold`` seconds of the simulator's clock, until its status has been asked
    once: then the clock jumps so it finishes (later jobs take the usual time). A sensor's first
    poke thus always finds its job running, and the next look finds it done, however slow the
    machine."""
    fast = sim.state.config.time_per_job
    sim.state.config.time_per_job = hold
    stop = threading.Event()
    released: set[str] = set()

    def status_request(r: Any) -> bool:
        return r.status == 200 and (
            r.path == "/web_api/v1/progress"
            or (r.method == "GET" and r.path.startswith("/api/v1/jobs/") and r.path.count("/") == 4)
        )

    def watch() -> None:
        while not stop.wait(0.01):
            looks = [r.at for r in list(sim.state.requests) if status_request(r)]
            for job in list(sim.state.jobs.values()):
                # Once started (a job still queued would start after the jump and be held again).
                if job.id in released or job.status != "processing":
                    continue
                if any(at >= job.created_at for at in looks):
                    released.add(job.id)
                    sim.state.config.time_per_job = fast
                    sim.state.clock.advance(hold)

    thread = threading.Thread(target=watch, name="release-jobs", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def rebuild_trigger(trigger: Any) -> tuple[Any, dict[str, Any]]:
    """The trigger as the triggerer rebuilds it from ``serialize()`` (kwargs as plain JSON), and
    those kwargs."""
    path, kwargs = trigger.serialize()
    json.dumps(kwargs)  # plain JSON, as the triggerer table stores it
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs), kwargs


def submit_jobs(vance_conn: Any, api: str, make_image: Any, n: int = 2) -> list[str]:
    """``n`` upscale jobs submitted through ``vanceai_default`` (set to ``api``): their ids."""
    from vance_provider.hooks.vanceai import VanceAIHook

    vance_conn(api)
    hook = VanceAIHook()
    ids = [hook.client.submit(str(make_image(f"t{i}.jpg")), "upscale", {"scale": 2}).id for i in range(n)]
    hook.close()
    return ids


def stop_process_groups(procs: list[Any], sig: int, grace: float = 20.0) -> None:
    """Signal the process group of each of ``procs`` (a component this test started and its
    children) first, then wait for them together; SIGKILL those still there after ``grace`` s."""
    import signal
    import subprocess
    import time

    for s in (sig, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, s)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        procs = [proc for proc in procs if proc.poll() is None]
        if not procs:
            return
