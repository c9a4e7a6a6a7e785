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
after that (the resumed attempt running). The deferral must not cost the run: they fail while the
stale report can fail a resumed batch.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.airflow.helpers import load_dag, ti_states, xcom


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


@pytest.mark.parametrize("resumed", ["queued", "running"])
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
