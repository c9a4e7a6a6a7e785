"""A stopped task leaves no VanceAI job running, and its rerun pays nothing twice.

* killed in the worker (SIGTERM -> ``on_kill``);
* marked failed (or cleared) while deferred: the trigger's ``on_kill`` (Airflow 3.3), or its own
  check of the task's state when cancelled (Airflow 3.0-3.2) - and a triggerer restart cancels nothing;
* ``execution_timeout`` reached while deferred, and in the worker.

Each time: every job of the simulator is terminal, the canceled jobs' items are ``pending`` in the
manifest, and the rerun submits only those, charging every input exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest

from tests.airflow.helpers import load_dag, ti_states, xcom
from tests.core.helpers import manifest_job_ids

RUN_TASK = """
import sys
from tests.airflow.helpers import load_dag
dag = load_dag("vanceai_credit_checked_batch")
enhance = dag.get_task("enhance")
enhance.deferrable = False
enhance.poll_interval = 0.1
enhance.max_concurrency = 2
dag.test(run_conf={"source": sys.argv[1], "destination": sys.argv[2]})
"""

N = 4


def _inputs(make_image, tmp_path, name: str):
    for i in range(N):
        make_image(f"{name}/in/p{i}.jpg", 32, 24)
    return tmp_path / name / "in", tmp_path / name / "out"


def _running(server) -> list[str]:
    return [j.id for j in server.state.jobs.values() if j.status in ("queued", "processing")]


def _check_stopped(server, dst, canceled_at_least: int = 1) -> set[str]:
    """No job left running; the canceled ones are pending again in the manifest."""
    from vance_provider.core.state.manifest import ItemState, Manifest

    assert _running(server) == []
    canceled = {j.id for j in server.state.jobs.values() if j.status == "canceled"}
    assert len(canceled) >= canceled_at_least
    assert not server.state.charges()  # canceled before finishing: nothing paid
    manifest = Manifest.for_destination(str(dst)).load()
    assert not {i.job_id for i in manifest.items.values()} & canceled
    # Canceled jobs' items are pending again; an item whose turn came while the stop was under way
    # is skipped without a job ("not submitted: the task was stopped"): both are submitted next run.
    for item in manifest.items.values():
        assert item.state == ItemState.PENDING or (item.state == ItemState.SKIPPED and not item.job_id), (
            item.state,
            item.error,
            item.error_code,
            item.job_id,
        )
    return canceled


def _rerun_pays_once(server, src, dst, canceled: set[str], *, deferrable: bool) -> None:
    server.state.config.time_per_job = 0.05  # the rerun's jobs finish at once
    before = set(server.state.jobs)
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable, enhance.poll_interval = deferrable, 0.1
    dr = dag.test(run_conf={"source": str(src), "destination": str(dst)})
    assert ti_states(dr)["enhance"] == "success"
    assert xcom(dr, "enhance")["done"] == N
    assert not server.state.double_charges()
    charged = Counter(server.state.jobs[e.job_id].source_name for e in server.state.charges())
    assert len(charged) == N and set(charged.values()) == {1}  # every input paid exactly once
    assert not {e.job_id for e in server.state.charges()} & canceled
    new = set(server.state.jobs) - before
    assert len(new) == N - (len(before) - len(canceled))  # only the canceled (or never sent) ones


@pytest.mark.slow
def test_killed_in_the_worker(sim_factory, vance_conn, make_image, tmp_path) -> None:
    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    src, dst = _inputs(make_image, tmp_path, "kill")
    worker = subprocess.Popen(
        [sys.executable, "-c", RUN_TASK, str(src), str(dst)],
        env=dict(os.environ),
        cwd=os.getcwd(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    # Two jobs in flight (max_concurrency=2) and their ids in the task's manifest (it has their
    # answers: a job whose answer is still on the wire at the kill is found again by its key on
    # the rerun, not canceled): kill the task now.
    manifest = dst / "_vance_manifest.json"
    while len(_running(server)) < 2 or len(manifest_job_ids(manifest)) < 2:
        assert worker.poll() is None, "the task finished before the kill"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGTERM)  # what the supervisor sends on a kill or "mark failed"
    assert worker.wait(60) is not None
    canceled = _check_stopped(server, dst, canceled_at_least=2)
    _rerun_pays_once(server, src, dst, canceled, deferrable=False)


def _deferred(sim_factory, vance_conn, make_image, tmp_path, name: str):
    """A deferrable batch of 4 photos deferred with 2 jobs in flight (they run until canceled):
    the simulator, the destination, and the trigger's class and serialized arguments."""
    from tests.airflow.test_airflow_batch import _context, _operator
    from vance_provider.airflow_compat import TaskDeferred

    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    src, dst = _inputs(make_image, tmp_path, name)
    with pytest.raises(TaskDeferred) as deferred:
        _operator(src, dst, max_concurrency=2).execute(_context())
    _path, kwargs = deferred.value.trigger.serialize()
    return server, src, dst, type(deferred.value.trigger), kwargs


@pytest.mark.slow
@pytest.mark.parametrize("airflow_has_on_kill", [True, False], ids=["airflow-3.3", "airflow-3.0-3.2"])
def test_marked_failed_while_deferred(
    airflow_has_on_kill, sim_factory, vance_conn, make_image, tmp_path, monkeypatch
) -> None:
    from vance_provider.triggers import vanceai as triggers

    server, src, dst, trigger_type, kwargs = _deferred(sim_factory, vance_conn, make_image, tmp_path, "mark")
    trigger = trigger_type(**kwargs)  # as the triggerer builds it
    assert len(_running(server)) == 2

    monkeypatch.setattr(triggers, "TRIGGER_ON_KILL", airflow_has_on_kill)
    states = iter(["deferred", "failed"])  # a triggerer restart first, then the user's "mark failed"

    async def task_was_stopped(self) -> bool:
        return next(states) != "deferred"

    monkeypatch.setattr(triggers._VanceAITrigger, "_task_was_stopped", task_was_stopped)

    async def cancel_like_the_triggerer(user_action: bool) -> None:
        task = asyncio.create_task(anext(trigger.run()))
        await asyncio.sleep(0)  # let it start polling
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        if user_action and airflow_has_on_kill:  # Airflow 3.3 calls on_kill after a user's action
            await trigger.on_kill()

    if not airflow_has_on_kill:  # a restart (the task is still deferred) cancels nothing
        asyncio.run(cancel_like_the_triggerer(user_action=False))
        assert len(_running(server)) == 2 and trigger.killed is None
    asyncio.run(cancel_like_the_triggerer(user_action=True))
    assert sorted(trigger.killed or []) == sorted(trigger.job_ids)
    canceled = _check_stopped(server, dst, canceled_at_least=2)
    _rerun_pays_once(server, src, dst, canceled, deferrable=True)


@pytest.mark.slow
def test_on_kill_cancels_with_the_connection_read_at_the_start(
    sim_factory, vance_conn, make_image, tmp_path, monkeypatch
) -> None:
    """The triggerer gives ``on_kill`` 30 s ([triggerer] on_kill_timeout); under load, reading a
    connection through the API server took longer than that. The cancels use the connection the
    trigger read when it started: a stop reads none."""
    from vance_provider.hooks.vanceai import VanceAIHook
    from vance_provider.triggers import vanceai as triggers

    monkeypatch.setattr(triggers, "TRIGGER_ON_KILL", True)  # the cancels are on_kill's (Airflow 3.3)
    server, _src, dst, trigger_type, kwargs = _deferred(sim_factory, vance_conn, make_image, tmp_path, "conn")
    trigger = trigger_type(**kwargs)  # as the triggerer builds it
    reads: list[str] = []
    read = VanceAIHook.get_connection

    def counted(conn_id: str) -> object:
        reads.append(conn_id)
        return read(conn_id)

    monkeypatch.setattr(VanceAIHook, "get_connection", staticmethod(counted))

    async def stop_once_it_runs() -> None:
        task = asyncio.create_task(anext(trigger.run()))
        while not reads:  # the trigger has read its connection (in a thread)
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.on_kill()

    asyncio.run(stop_once_it_runs())
    assert reads == [trigger.conn_id]
    assert sorted(trigger.killed or []) == sorted(trigger.job_ids) and len(trigger.job_ids) == 2
    _check_stopped(server, dst, canceled_at_least=2)


@pytest.mark.slow
def test_the_trigger_cancels_the_jobs_at_the_execution_timeout(
    sim_factory, vance_conn, make_image, tmp_path
) -> None:
    """At the task's execution_timeout the trigger cancels the jobs in flight itself: the task
    fails when it resumes, and Airflow's timeout, counting there too, cut short a cancel made
    there (under load, before it had sent one)."""
    server, _src, dst, trigger_type, kwargs = _deferred(sim_factory, vance_conn, make_image, tmp_path, "xtt")
    handed = list(kwargs["job_ids"])
    kwargs.update(
        end_time=time.time(),  # the execution_timeout has passed
        carry={**kwargs["carry"], "reason": "execution_timeout"},
        resume_after=None,
    )
    event = asyncio.run(anext(trigger_type(**kwargs).run()))
    assert event.payload["status"] == "timeout" and len(handed) == 2
    assert set(handed) <= set(event.payload["canceled"])
    canceled = _check_stopped(server, dst, canceled_at_least=2)
    assert canceled == set(event.payload["canceled"])


@pytest.mark.slow
def test_interrupted_while_handing_off_cancels_what_it_started(
    sim_factory, vance_conn, make_image, tmp_path, monkeypatch
) -> None:
    """Airflow's execution_timeout (a SIGALRM whose handler raises, as Airflow's does) reaching the
    worker while it starts the first jobs of a deferrable batch: the task will not defer, so nothing
    would wait for them. The hand-off writes their ids and the operator cancels them."""
    import threading

    from tests.airflow.test_airflow_batch import _context, _operator
    from vance_provider.core.batch.runner import BatchRunner
    from vance_provider.operators import batch as batch_operator

    class Timeout(Exception):
        pass

    def alarm(signum: int, frame: object) -> None:
        raise Timeout

    monkeypatch.setattr(batch_operator, "resume_after", lambda: 0.0)  # no hold: the plain hand-off
    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    src, dst = _inputs(make_image, tmp_path, "ho")
    started = threading.Event()
    submit_ahead = BatchRunner.submit_ahead

    async def slow_after_submitting(self: BatchRunner, work: list) -> None:
        await submit_ahead(self, work)
        started.set()  # the jobs exist; the hand-off is still under way when the alarm comes
        await asyncio.Event().wait()

    monkeypatch.setattr(BatchRunner, "submit_ahead", slow_after_submitting)
    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        pid = os.getpid()
        threading.Thread(
            target=lambda: started.wait(60) and os.kill(pid, signal.SIGALRM), daemon=True
        ).start()
        with pytest.raises(Timeout):
            _operator(src, dst, max_concurrency=2).execute(_context())
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert started.is_set() and len(server.state.jobs) == 2
    _check_stopped(server, dst, canceled_at_least=2)


@pytest.mark.slow
def test_execution_timeout_while_deferred(sim_factory, vance_conn, make_image, tmp_path) -> None:
    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    src, dst = _inputs(make_image, tmp_path, "xt")
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable, enhance.poll_interval, enhance.max_concurrency = True, 0.1, 2
    enhance.execution_timeout = timedelta(seconds=1)  # the jobs take 10 minutes
    dr = dag.test(run_conf={"source": str(src), "destination": str(dst)})
    assert ti_states(dr)["enhance"] in ("failed", "up_for_retry")
    canceled = _check_stopped(server, dst, canceled_at_least=2)
    _rerun_pays_once(server, src, dst, canceled, deferrable=True)


@pytest.mark.slow
def test_execution_timeout_in_the_worker(sim_factory, vance_conn, make_image, tmp_path) -> None:
    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    src, dst = _inputs(make_image, tmp_path, "xtw")
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable, enhance.poll_interval, enhance.max_concurrency = False, 0.1, 2
    enhance.execution_timeout = timedelta(seconds=1)
    dr = dag.test(run_conf={"source": str(src), "destination": str(dst)})
    assert ti_states(dr)["enhance"] in ("failed", "up_for_retry")
    canceled = _check_stopped(server, dst, canceled_at_least=2)
    _rerun_pays_once(server, src, dst, canceled, deferrable=False)
