"""Issue 17 §7: why deferrable batches failed mid-batch in a real scheduler + triggerer.

Reproduced on the wave design (31ea980 with its ``_batch_steps`` module restored): 4 of 8 runs of
200 items failed with nothing in the task's log. The scheduler's log had, each time::

    Workload finished  duration=5.5 s  final_state=deferred          (an earlier cycle's worker)
    Received executor event with state success for ... try_number=1   (its stale exit report)
    Executor LocalExecutor(parallelism=4) reported that the task instance <... [queued]> finished
    with state success, but the task instance's state attribute is queued.
    Marking task as FAILED.

A deferral ends the worker's process with SUCCESS for the try, and a resume keeps the try
number, so the executor reports every cycle under one ``TaskInstanceKey``. The task supervisor
notices a process that closed its sockets before exiting only at its next wake-up, up to
``[workers] min_heartbeat_interval`` (5 s) later, so that SUCCESS can be drained after the
trigger has fired and the scheduler has queued the resumed attempt. Its ``change_state`` takes
the shared key out of ``executor.running``, ``executor.has_task(ti)`` is then False, and
``SchedulerJobRunner.process_executor_events`` (Airflow 3.3.2) fails the task instance as
"killed externally" unless it is SCHEDULED. Upstream: apache/airflow#66374 (scheduled, fixed in
#66431), #67287 (queued, #68741), #72716 (running, open).

The window design defers once, but a batch the triggerer finishes within that window (a
small batch, or one almost done) resumes just as quickly. These tests drive the real operator and
trigger with ``dag.test()`` and drain the deferral's exit report through the scheduler's own code
at the moment it arrived in the deployment (the resumed attempt queued) and at a moment just
after that (the resumed attempt running). They are expected to fail on the Airflow versions that
have the race (strict: a fixed Airflow makes them pass, and then the marks go).

What the provider does about it (tested below): its triggers hold their event until
``resume_after``, which the operator sets when it defers to ``[workers] min_heartbeat_interval`` +
3 s later (``[vanceai] resume_after_deferral`` overrides it). The late report is then read while
the task is still deferred, where the scheduler ignores it. The batch operator keeps a batch in the
worker while its rest looks shorter than that wait (``test_airflow_deferrable.py``), but a batch it
hands over can still end sooner in the triggerer: the hold stays. In the deployment, current code:
5 of 34 runs of 100-200 items failed so before; see ``docs/scaling.md`` for the runs after.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from typing import Any
from unittest.mock import MagicMock

import pytest
from packaging.version import Version

from tests.airflow.helpers import load_dag, rebuild_trigger, submit_jobs, ti_states, xcom


def _drain_stale_exit_report(dag_id: str, task_id: str, run_id: str) -> list[str]:
    """What the scheduler does when the deferral's worker exit is reported late: the executor
    buffers SUCCESS for the try (``LocalExecutor.sync`` -> ``change_state``, which also takes the
    key out of ``running``), and ``process_executor_events`` drains it. Returns the task
    instance's state before and after."""
    from airflow.executors.local_executor import LocalExecutor
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    try:
        from airflow.models.dagbag import DBDagBag as SchedulerDagBag
    except ImportError:  # Airflow 3.0
        from airflow.jobs.scheduler_job_runner import SchedulerDagBag  # type: ignore[attr-defined,no-redef]

    query = select(TaskInstance).where(
        TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id, TaskInstance.run_id == run_id
    )
    with create_session() as session:
        ti = session.scalars(query).one()
        before = str(ti.state)
        executor = LocalExecutor()
        executor.change_state(ti.key, TaskInstanceState.SUCCESS)  # the same key: try_number unchanged
        SchedulerJobRunner.process_executor_events(
            executor=executor, job_id=None, scheduler_dag_bag=SchedulerDagBag(), session=session
        )
    with create_session() as session:
        return before, str(session.scalars(query).one().state)


RACE_QUEUED = pytest.mark.xfail(
    Version(importlib.metadata.version("apache-airflow")) <= Version("3.3.2"),
    reason="apache/airflow#67287: fixed by #68741, after 3.3.2",
    strict=True,
)
RACE_RUNNING = pytest.mark.xfail(reason="apache/airflow#72716: open", strict=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    "resumed",
    [pytest.param("queued", marks=RACE_QUEUED), pytest.param("running", marks=RACE_RUNNING)],
)
def test_a_late_exit_report_of_the_deferral_does_not_fail_the_resumed_batch(
    resumed, sim, vance_conn, make_image, tmp_path, trigger_runs, monkeypatch
) -> None:
    import airflow.sdk.execution_time.supervisor as supervisor

    from vance_provider.operators.vanceai import VanceAIEnhanceOperator

    vance_conn("open")
    for i in range(3):  # fewer than max_concurrency: the triggerer finishes the batch at once
        make_image(f"in/photo_{i}.jpg", 64, 48)
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable = True
    enhance.poll_interval = 0.1
    drained: list[tuple[str, str]] = []

    original_run = supervisor.run_task_in_process

    def run_task_in_process(ti: Any, task: Any) -> Any:
        # dag.test() has just set the resumed attempt QUEUED (as the scheduler does before it
        # hands the workload over): the deployment's failures drained the report here.
        if resumed == "queued" and task.task_id == "enhance" and trigger_runs:
            drained.append(_drain_stale_exit_report(ti.dag_id, ti.task_id, ti.run_id))
        return original_run(ti=ti, task=task)

    original_complete = VanceAIEnhanceOperator.execute_complete

    def execute_complete(self: Any, context: Any, event: Any, reason: Any = None) -> Any:
        if resumed == "running":  # the resumed attempt is running when the report is drained
            ti = context["ti"]
            drained.append(_drain_stale_exit_report(ti.dag_id, ti.task_id, ti.run_id))
        return original_complete(self, context, event=event, reason=reason)

    monkeypatch.setattr(supervisor, "run_task_in_process", run_task_in_process)
    monkeypatch.setattr(VanceAIEnhanceOperator, "execute_complete", execute_complete)

    dr = dag.test(run_conf={"source": str(tmp_path / "in"), "destination": str(tmp_path / "out")})

    assert trigger_runs == ["VanceAIBatchTrigger"]  # the batch deferred once
    assert [before for before, _ in drained] == [resumed], drained  # drained once, at that moment
    # The scheduler must leave the resumed attempt alone (in a deployment a FAILED here also kills
    # the attempt's process; dag.test() would write the in-process result over it, so look here).
    assert drained == [(resumed, resumed)], (
        f"the scheduler failed the resumed batch on the deferral's late exit report: {drained}"
    )
    assert ti_states(dr) == {"check_credits": "success", "enhance": "success"}
    summary = xcom(dr, "enhance")
    assert summary["done"] == 3 and summary["failed"] == 0 and summary["credits_spent"] == 3.0
    assert len(sim.state.charges()) == 3 and not sim.state.double_charges()


def test_resume_after_waits_for_the_deferring_workers_exit_to_be_read(monkeypatch) -> None:
    from vance_provider._common import resume_after

    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", "")
    monkeypatch.setenv("AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL", "7")
    before = time.time()
    when = resume_after()
    assert before + 7 + 3 <= when <= time.time() + 7 + 3  # the supervisor's wake-up, and the scheduler's loop
    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", "1.5")
    before = time.time()
    when = resume_after()
    assert before + 1.5 <= when <= time.time() + 1.5
    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", "5s")
    with pytest.raises(ValueError, match=r"resume_after_deferral must be a number of seconds .* not '5s'"):
        resume_after()


@pytest.mark.parametrize("outcome", ["success", "error"])
def test_a_trigger_holds_its_event_until_resume_after(
    outcome, sim, vance_conn, make_image, monkeypatch
) -> None:
    """The jobs are done at once, yet the event waits for ``resume_after`` (survives a triggerer
    restart: it is serialized); an error event waits too."""
    from vance_provider.hooks.vanceai import VanceAIHook
    from vance_provider.triggers import vanceai as module

    job_ids = submit_jobs(vance_conn, "open", make_image, n=1)
    hook = VanceAIHook()
    hook.client.wait(job_ids[0], poll_interval=0.05)
    hook.close()
    if outcome == "error":
        job_ids = ["no-such-job"]
    seen: list[str] = []

    async def wait_until(when: float) -> None:
        seen.append(f"wait {when}")

    monkeypatch.setattr(module, "wait_until", wait_until)
    later = time.time() + 30
    trigger = module.VanceAIJobTrigger("vanceai_default", job_ids, poll_interval=0.05, resume_after=later)
    rebuilt, kwargs = rebuild_trigger(trigger)
    assert kwargs["resume_after"] == later

    async def events() -> None:
        async for event in rebuilt.run():
            seen.append(event.payload["status"])

    asyncio.run(events())
    assert seen == [f"wait {later}", outcome]
    # No wait once the time has passed (a long batch, or [vanceai] resume_after_deferral = 0).
    seen.clear()
    rebuilt.resume_after = time.time() - 1
    asyncio.run(events())
    assert seen == [outcome]
    # A worker clock far ahead holds the event a minute at most.
    seen.clear()
    rebuilt.resume_after = time.time() + 3600
    before = time.time()
    asyncio.run(events())
    held = float(seen[0].split()[1])
    assert before + 60 <= held <= time.time() + 60 and seen[1:] == [outcome]


@pytest.mark.parametrize("task", ["batch", "job", "sensor"])
def test_every_deferral_sets_resume_after(task, sim, vance_conn, make_image, tmp_path, monkeypatch) -> None:
    """The batch operator, the job operator and the sensor each defer with ``resume_after``."""
    from vance_provider.airflow_compat import TaskDeferred
    from vance_provider.operators.vanceai import VanceAIEnhanceOperator, VanceAISubmitJobOperator
    from vance_provider.sensors.vanceai import VanceAIJobSensor

    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", "4")
    vance_conn("open")
    sim.config.time_per_job = 30.0  # the jobs still run when the task defers
    for i in range(3):
        make_image(f"in/p{i}.jpg")
    if task == "batch":
        op = VanceAIEnhanceOperator(
            task_id="t",
            source=str(tmp_path / "in"),
            destination=str(tmp_path / "out"),
            tool="upscale",
            config={"scale": 2},
            deferrable=True,
        )
    elif task == "job":
        op = VanceAISubmitJobOperator(
            task_id="t", source=str(tmp_path / "in" / "p0.jpg"), tool="upscale", deferrable=True
        )
    else:
        op = VanceAIJobSensor(
            task_id="t", job_ids=submit_jobs(vance_conn, "open", make_image, n=1), deferrable=True
        )
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context={"ti": MagicMock()})  # the job id pushed to XCom: not looked at here
    assert before + 4 <= deferred.value.trigger.resume_after <= time.time() + 4
