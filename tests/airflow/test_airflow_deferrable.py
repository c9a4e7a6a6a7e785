"""The deferrable batch: the window runs in the trigger, a restarted triggerer resumes it from the
manifest without paying twice, and a backend whose results stay in the submitting process runs
in the worker instead of failing item by item."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.airflow.test_airflow_batch import _context, _created_jobs, _drive, _operator, _peak_in_flight


def _defer(op, context):
    from vance_provider.airflow_compat import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value


async def _processing(server, n: int) -> None:
    """Wait until ``n`` jobs are running on the service (then the test moves its clock)."""
    for _ in range(1200):
        if sum(1 for j in list(server.state.jobs.values()) if j.status == "processing") >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the jobs did not start")


def _done_in_manifest(op) -> int:
    """How many items the batch's manifest (as stored) has done."""
    from vance_provider.core.state.manifest import ItemState, Manifest

    items = Manifest.for_destination(str(op.destination)).load().items.values()
    return sum(1 for item in items if item.state == ItemState.DONE)


def _rebuilt(trigger):
    _path, kwargs = trigger.serialize()
    json.dumps(kwargs)  # plain JSON, as the trigger table stores it
    return type(trigger)(**kwargs), kwargs


@pytest.mark.parametrize("api", ["open", "web"])
def test_triggerer_restart_mid_window_pays_nothing_twice(
    api, sim_factory, vance_conn, make_image, tmp_path
) -> None:
    """The trigger is cancelled (a triggerer restart) with jobs done, jobs in flight and inputs not
    yet submitted; a trigger rebuilt from serialize() resumes from the manifest and finishes."""
    server = sim_factory(time_per_job=600.0)  # jobs finish only when the test moves the clock
    token = vance_conn(api, server=server)
    for i in range(5):
        make_image(f"rs/in/p{i}.jpg", 32, 24)
    op = _operator(tmp_path / "rs" / "in", tmp_path / "rs" / "out", max_concurrency=2)
    context = _context()
    deferred = _defer(op, context)
    assert len(_created_jobs(server)) == 2  # the first window started before the deferral
    first, kwargs = _rebuilt(deferred.trigger)
    assert token not in json.dumps(kwargs) and token not in repr(first)
    assert (
        kwargs["batch"]["owner"].startswith("airflow:d:t:r:-1:try")
        and "storage_options" not in kwargs["batch"]
    )

    async def run_until_restart() -> None:
        task = asyncio.create_task(anext(first.run()))
        await _processing(server, 2)
        server.state.clock.advance(600)  # the worker's two jobs finish
        # The trigger fills the window again as soon as a job is done, and stores its result beside:
        # the restart comes once both are stored and recorded (a restart in between is a takeover).
        for _ in range(1200):
            if (len(_created_jobs(server)) == 4 and _done_in_manifest(op) == 2) or task.done():
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.result().payload
        assert len(_created_jobs(server)) == 4
        task.cancel()  # the triggerer goes away
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_until_restart())
    created = _created_jobs(server)
    second, _ = _rebuilt(deferred.trigger)  # the new triggerer rebuilds it from the trigger table

    async def run_to_the_end():
        task = asyncio.create_task(anext(second.run()))
        for _ in range(3000):  # every job that runs is let finish, until the batch is done
            if task.done():
                return task.result()
            if any(j.status == "processing" for j in list(server.state.jobs.values())):
                server.state.clock.advance(600)
            await asyncio.sleep(0.02)
        raise AssertionError("the resumed trigger did not finish")

    event = asyncio.run(run_to_the_end())
    summary = op.execute_complete(context, event=event.payload, **deferred.kwargs or {})
    assert summary["done"] == 5 and summary["failed"] == 0 and summary["credits_spent"] == 5.0
    new = _created_jobs(server)[len(created) :]
    assert len(new) == 1 and len(set(_created_jobs(server))) == 5  # only the input never submitted
    assert len(server.state.charges()) == 5 and not server.state.double_charges()
    assert _peak_in_flight(server) <= 2


def test_trigger_holds_the_batch_lease(sim_factory, vance_conn, make_image, tmp_path) -> None:
    """While the trigger runs the window, another run of the same batch is refused (lease)."""
    from vance_provider.core.api.errors import BatchLockedError

    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    for i in range(3):
        make_image(f"ls/in/p{i}.jpg", 32, 24)
    src, dst = tmp_path / "ls" / "in", tmp_path / "ls" / "out"
    deferred = _defer(_operator(src, dst, max_concurrency=1), _context())
    trigger, _ = _rebuilt(deferred.trigger)

    async def other_run_meanwhile() -> None:
        task = asyncio.create_task(anext(trigger.run()))
        for _ in range(600):
            if any(r.method == "GET" and "/jobs/" in r.path for r in list(server.state.requests)):
                break  # the trigger has resumed the batch and looks at its job
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the trigger never looked at its job")
        other = _operator(src, dst, deferrable=False)
        other_context = _context()
        other_context["ti"].run_id = "another-run"
        with pytest.raises(BatchLockedError, match="being run by airflow:d:t:r:-1"):
            await asyncio.to_thread(other.execute, other_context)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(other_run_meanwhile())
    assert len(_created_jobs(server)) == 1


def test_visioncraft_deferrable_runs_in_the_worker(sim, vance_conn, make_image, tmp_path, capsys) -> None:
    """VisionCraft keeps results in the submitting process: no deferral, one log line saying why."""
    from vance_provider.sim import DEMO_VISIONCRAFT_TOKEN

    vance_conn("visioncraft", token=DEMO_VISIONCRAFT_TOKEN, conn_id="visioncraft_default")
    for i in range(3):
        make_image(f"vc/in/p{i}.jpg", 40, 30)
    op = _operator(
        tmp_path / "vc" / "in", tmp_path / "vc" / "out", vanceai_conn_id="visioncraft_default", config=None
    )
    summary, deferrals = _drive(op, _context())
    assert deferrals == []
    assert summary["done"] == 3 and summary["failed"] == 0
    out = capsys.readouterr()
    assert "keeps results in the process that submitted the jobs" in out.out + out.err
