"""The batch DAG end to end with ``dag.test()`` against the simulator: both APIs, both modes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

from tests.airflow.helpers import all_xcoms, asset_events, load_dag, rendered_fields, ti_states, xcom
from tests.core.helpers import release_held_jobs


@pytest.mark.slow
@pytest.mark.parametrize("deferrable", [False, True], ids=["worker", "deferrable"])
@pytest.mark.parametrize("api", ["open", "web"])
def test_batch_dag(api, deferrable, sim, vance_conn, make_image, tmp_path, trigger_runs) -> None:
    token = vance_conn(api)
    src = tmp_path / "in"
    for i in range(3):
        make_image(f"in/photo_{i}.jpg", 64, 48)
    dst = tmp_path / "out"
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable = deferrable
    enhance.poll_interval = 0.1
    conf = {"source": str(src), "destination": str(dst)}

    dr = dag.test(run_conf=conf)
    assert ti_states(dr) == {"check_credits": "success", "enhance": "success"}
    summary = xcom(dr, "enhance")
    assert summary["total"] == 3 and summary["done"] == 3 and summary["failed"] == 0
    assert summary["credits_spent"] == 3.0
    outputs = sorted(Path(p) for p in summary["outputs"])
    assert len(outputs) == 3
    for out in outputs:
        with Image.open(out) as img:
            assert img.size == (128, 96)
    assert len(sim.state.charges()) == 3 and not sim.state.double_charges()
    assert trigger_runs == (["VanceAIBatchTrigger"] if deferrable else [])
    # The templated destination is announced through an AssetAlias; the event carries the counts.
    [event] = asset_events(dr)
    assert event["uri"] == f"file://{dst}" and event["done"] == 3 and event["credits_spent"] == 3.0
    check = xcom(dr, "check_credits")
    assert check["ok"] and check["inputs"] == 3 and check["needed"] == 3.0

    # A second run: everything is done already - nothing submitted, nothing paid.
    dr2 = dag.test(run_conf=conf)
    summary2 = xcom(dr2, "enhance")
    assert summary2["done"] == 3 and summary2["credits_spent"] == 0
    assert xcom(dr2, "check_credits")["needed"] == 0
    assert len(sim.state.charges()) == 3 and not sim.state.double_charges()
    assert len(trigger_runs) == (1 if deferrable else 0)  # nothing to wait for

    for run in (dr, dr2):
        for task_id, key, value in all_xcoms(run):
            assert token not in repr(value), (task_id, key)
        assert all(token not in repr(fields) for fields in rendered_fields(run))


# --- the operator driven directly: waves, retries, timeouts, budgets, failures --------------------
class _TI:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}
        self.dag_id, self.task_id, self.run_id, self.map_index, self.try_number = "d", "t", "r", -1, 1

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def _context() -> dict:
    return {"ti": _TI(), "outlet_events": {}}


def _operator(src, dst, **kwargs):
    from vance_provider.operators.vanceai import VanceAIEnhanceOperator

    kwargs = {
        "deferrable": True,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        "tool": "upscale",
        "config": {"scale": 2},
        **kwargs,
    }
    return VanceAIEnhanceOperator(task_id="enhance", source=str(src), destination=str(dst), **kwargs)


def _drive(op, context, max_steps: int = 20):
    """Run a deferrable operator as the triggerer would: execute, then trigger -> execute_complete."""
    from vance_provider.airflow_compat import TaskDeferred

    steps = []
    call = lambda: op.execute(context)  # noqa: E731
    for _ in range(max_steps):
        try:
            return call(), steps
        except TaskDeferred as deferred:
            trigger = deferred.trigger
            steps.append(list(trigger.job_ids))
            _path, kwargs = trigger.serialize()
            rebuilt = type(trigger)(**kwargs)  # the triggerer rebuilds it from serialize()
            event = asyncio.run(anext(rebuilt.run()))
            payload = event.payload
            method = getattr(op, deferred.method_name)
            call = lambda m=method, p=payload: m(context, event=p)  # noqa: E731
    raise AssertionError("too many deferrals")


def _created_jobs(server) -> list[str]:
    return [r.created_job for r in server.state.requests if r.created_job]


def _peak_in_flight(server) -> int:
    """The exact peak of jobs on the service, from its own record of when each existed."""
    with server.state.lock:
        events = sorted(
            [(j.created_at, 1) for j in server.state.jobs.values()]
            + [(j.finished_at or float("inf"), -1) for j in server.state.jobs.values()]
        )  # at equal times an end (-1) sorts before a start (+1)
    in_flight = [0]
    for _, step in events:
        in_flight.append(in_flight[-1] + step)
    return max(in_flight)


@pytest.mark.parametrize("api", ["open", "web"])
def test_deferrable_window_runs_in_the_trigger(api, sim, vance_conn, make_image, tmp_path) -> None:
    """One deferral for the whole batch: the worker prepares and starts the first window, the
    trigger keeps ``max_concurrency`` jobs on the service until the end, then the task summarises."""
    token = vance_conn(api)
    for i in range(5):
        make_image(f"w/in/p{i}.jpg", 32, 24)
    op = _operator(tmp_path / "w" / "in", tmp_path / "w" / "out", max_concurrency=2)
    summary, deferrals = _drive(op, _context())
    assert [len(d) for d in deferrals] == [2]  # one deferral; the first window was already running
    assert summary["done"] == 5 and summary["credits_spent"] == 5.0 and summary["total"] == 5
    assert len(set(_created_jobs(sim))) == 5 and _peak_in_flight(sim) == 2
    assert len(sim.state.charges()) == 5 and not sim.state.double_charges()
    assert token not in repr(summary)


def test_retry_after_deferral_resumes_without_resubmitting(
    sim_factory, vance_conn, make_image, tmp_path
) -> None:
    from vance_provider.airflow_compat import TaskDeferred

    sim = sim_factory(time_per_job=600.0)  # the jobs run until the test lets them finish
    vance_conn("open", server=sim)
    for i in range(3):
        make_image(f"r/in/p{i}.jpg", 32, 24)
    src, dst = tmp_path / "r" / "in", tmp_path / "r" / "out"
    with pytest.raises(TaskDeferred) as first:
        _operator(src, dst).execute(_context())
    submitted = _created_jobs(sim)
    assert len(submitted) == 3
    # The worker (or the triggerer) dies; the task is retried from scratch with a new operator.
    retry = _operator(src, dst)
    context = _context()
    with pytest.raises(TaskDeferred) as again:
        retry.execute(context)
    assert sorted(again.value.trigger.job_ids) == sorted(first.value.trigger.job_ids)  # the same jobs
    assert _created_jobs(sim) == submitted  # nothing submitted again
    release_held_jobs(sim, 600.0)  # now they finish
    event = asyncio.run(anext(again.value.trigger.run()))
    summary = retry.execute_complete(context, event=event.payload, **again.value.kwargs or {})
    assert summary["done"] == 3 and summary["credits_spent"] == 3.0
    assert _created_jobs(sim) == submitted
    assert len(sim.state.charges()) == 3 and not sim.state.double_charges()


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "worker"])
def test_timeout_cancels_open_api_jobs(deferrable, sim_factory, vance_conn, make_image, tmp_path) -> None:
    from vance_provider.airflow_compat import AirflowException
    from vance_provider.core.state.manifest import ItemState, Manifest

    server = sim_factory(time_per_job=30.0)
    vance_conn("open", server=server)
    for i in range(2):
        make_image(f"to/in/p{i}.jpg", 32, 24)
    dst = tmp_path / "to" / "out"
    op = _operator(tmp_path / "to" / "in", dst, timeout=0.5, cancel_on_timeout=True, deferrable=deferrable)
    with pytest.raises(AirflowException, match=r"timed out|did not finish"):
        _drive(op, _context())
    jobs = server.state.jobs.values()
    assert len(jobs) == 2 and all(j.status == "canceled" for j in jobs)
    assert not server.state.charges()
    manifest = Manifest.for_destination(str(dst)).load()
    assert all(
        i.state == ItemState.PENDING and i.job_id is None and i.generation == 1
        for i in manifest.items.values()
    )


def test_budget_stops_submissions_in_the_trigger(sim, vance_conn, make_image, tmp_path) -> None:
    from vance_provider.airflow_compat import AirflowFailException

    vance_conn("open")
    for i in range(4):
        make_image(f"b/in/p{i}.jpg", 32, 24)
    src = tmp_path / "b" / "in"
    with pytest.raises(AirflowFailException, match="BudgetExceededError"):
        _drive(_operator(src, tmp_path / "b" / "out1", credit_budget=2), _context())
    assert not sim.state.requests or not _created_jobs(sim)
    op = _operator(
        src, tmp_path / "b" / "out2", credit_budget=2, on_insufficient_credits="partial", max_concurrency=1
    )
    summary, deferrals = _drive(op, _context())
    assert len(deferrals) == 1  # the trigger carries the run's spending across the window
    assert (summary["done"], summary["skipped"], summary["credits_spent"]) == (2, 2, 2.0)
    assert summary["stopped"] and "budget" in summary["stopped"]
    assert len(sim.state.charges()) == 2


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "worker"])
def test_failed_jobs_and_failure_policy(deferrable, vance_conn, make_image, tmp_path) -> None:
    from tests.conftest import fast_config
    from vance_provider.airflow_compat import AirflowException
    from vance_provider.sim import Faults, SimulatorServer

    for i in range(3):
        make_image(f"f/in/p{i}.jpg", 32, 24)
    src = tmp_path / "f" / "in"
    with SimulatorServer(fast_config(faults=Faults(fail_job=1.0))) as server:
        vance_conn("open", server=server)
        context = _context()
        with pytest.raises(AirflowException, match="3 of 3 item"):
            _drive(_operator(src, tmp_path / "f" / "o1", deferrable=deferrable, max_concurrency=1), context)
        assert context["ti"].pushed["summary"]["failed"] == 3
        assert len(_created_jobs(server)) == 3  # a failure is not resubmitted within the run
        # The next run (a retry) submits the failed inputs afresh (a new generation, a new key).
        with pytest.raises(AirflowException, match="3 of 3 item"):
            _drive(_operator(src, tmp_path / "f" / "o1", deferrable=deferrable), _context())
        assert len(_created_jobs(server)) == 6
        summary, _ = _drive(
            _operator(src, tmp_path / "f" / "o2", deferrable=deferrable, on_failure="continue"), _context()
        )
        assert summary["failed"] == 3 and summary["done"] == 0 and len(summary["failures"]) == 3
        assert not server.state.charges()


def test_invalid_settings_fail_at_parse_time(tmp_path) -> None:
    with pytest.raises(ValueError, match="on_failure"):
        _operator(tmp_path, tmp_path, on_failure="explode")
    with pytest.raises(ValueError, match="max_concurrency"):
        _operator(tmp_path, tmp_path, max_concurrency=0)


def test_outlet_asset_and_extra_link(tmp_path) -> None:
    from airflow.sdk import Asset

    from vance_provider.operators.vanceai import VanceAIDestinationLink, console_url

    op = _operator(tmp_path / "in", "s3://bucket/out/")
    assert op.outlets == [Asset("s3://bucket/out/")]
    assert _operator(tmp_path, "{{ params.d }}").outlets == []
    assert _operator(tmp_path, tmp_path / "out").outlets[0].uri == f"file://{tmp_path / 'out'}"
    assert (
        VanceAIDestinationLink().get_link(op, ti_key=None)
        == "https://s3.console.aws.amazon.com/s3/buckets/bucket?prefix=out/"
    )
    assert console_url("/local/path") == ""


def test_the_operator_looks_at_jobs_as_the_engine_does(vance_conn, tmp_path) -> None:
    """Left at their defaults, the operator's poll intervals are the engine's (the vendor's guidance
    for images: a look every 2 s at most), not slower ones of its own."""
    from vance_provider.core import BatchSpec
    from vance_provider.operators.vanceai import VanceAIEnhanceOperator

    vance_conn("open")
    op = VanceAIEnhanceOperator(
        task_id="t", tool="upscale", source=str(tmp_path / "in"), destination=str(tmp_path / "out")
    )
    engine = BatchSpec(str(tmp_path / "in"), str(tmp_path / "out"), "upscale")
    spec = op.spec()
    assert (spec.poll_interval, spec.max_poll_interval) == (engine.poll_interval, engine.max_poll_interval)
