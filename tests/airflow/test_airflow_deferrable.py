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


# --- the worker's window: a batch shorter than the resume hold is not deferred ---------------------
HOLD_S = 8.0  # [vanceai] resume_after_deferral in these tests: a deferred task waits that long


def test_the_rest_of_a_batch_is_handed_over_once_it_looks_longer_than_the_hold() -> None:
    from vance_provider.operators._worker_window import hand_over, rest_estimate

    assert rest_estimate(5.0, 10, 0, 16) == 0.0  # nothing left
    # Before any job ends, the jobs in flight are expected to run as long again, and a round of
    # jobs is the least that is left.
    assert rest_estimate(1.0, 0, 3, 16) == 1.0
    assert rest_estimate(1.0, 0, 64, 16) == 4.0
    # Then the rate: 48 items in 2 s, 16 at once: 152 left take 152 * 2 / (48 + 16) s.
    assert rest_estimate(2.0, 48, 152, 16) == 4.75
    # T = 0.25 s, 16 at once: 200 images look short after their first round, 1000 look long
    # within their first round.
    assert not hand_over(0.26, 16, 184, 16, HOLD_S)
    assert hand_over(0.13, 0, 1000, 16, HOLD_S)
    # Jobs of a minute: one image is handed over after the hold, a hundred at once.
    assert not hand_over(7.9, 0, 1, 16, HOLD_S) and hand_over(8.0, 0, 1, 16, HOLD_S)
    assert hand_over(1.3, 0, 100, 16, HOLD_S)
    # A batch that looked short but still runs after twice the hold is handed over anyway.
    assert not hand_over(15.9, 190, 10, 16, HOLD_S) and hand_over(16.0, 190, 10, 16, HOLD_S)
    assert not hand_over(100.0, 200, 0, 16, HOLD_S)  # nothing left: nothing to hand over


def _charged_once(server, n: int) -> None:
    """Every input charged exactly once, no job created twice for an input."""
    charged = [server.state.jobs[e.job_id].source_name for e in server.state.charges()]
    assert len(charged) == n and len(set(charged)) == n and not server.state.double_charges()
    created = _created_jobs(server)
    assert len(created) == n and len({server.state.jobs[j].source_name for j in created}) == n


@pytest.mark.parametrize("api", ["open", "web"])
def test_a_batch_shorter_than_the_hold_finishes_in_the_worker(
    api, sim_factory, vance_conn, make_image, tmp_path, trigger_runs, monkeypatch
) -> None:
    """The window runs in the worker while the rest looks shorter than the hold (the window's clock
    stands still here, so the rest never looks long): the batch ends there, nothing is deferred,
    and every input is paid once."""
    from vance_provider.operators import _worker_window

    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", str(HOLD_S))
    monkeypatch.setattr(_worker_window, "now", lambda: 0.0)
    server = sim_factory()
    vance_conn(api, server=server)
    for i in range(5):
        make_image(f"sw/in/p{i}.jpg", 32, 24)
    op = _operator(tmp_path / "sw" / "in", tmp_path / "sw" / "out", max_concurrency=2)
    summary = op.execute(_context())  # returns: no TaskDeferred
    assert summary["done"] == 5 and summary["failed"] == 0 and summary["credits_spent"] == 5.0
    assert trigger_runs == []
    _charged_once(server, 5)
    assert _peak_in_flight(server) <= 2


def _run_in_thread(fn):
    """``fn()`` in a thread (the operator blocks while the test drives the simulator): a join
    that returns its result or raises its exception."""
    import threading

    out: dict = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # handed to the test's thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join(timeout: float = 120.0):
        thread.join(timeout)
        assert not thread.is_alive(), "the task did not end"
        if "error" in out:
            raise out["error"]
        return out["result"]

    return join


@pytest.mark.parametrize("api", ["open", "web"])
def test_a_batch_handed_over_midway_pays_nothing_twice_and_its_event_waits_for_the_hold(
    api, sim_factory, vance_conn, make_image, tmp_path, monkeypatch
) -> None:
    """The worker collects two items, then the rest looks long: it hands the batch over with jobs
    in flight and an input not yet submitted. The trigger resumes from the manifest, fetches
    nothing the worker stored, submits only the rest, and holds its event until the task may
    resume (the resume race's guard, counted from the deferral)."""
    import time

    from vance_provider.core.state.manifest import ItemState, Manifest
    from vance_provider.operators import _worker_window
    from vance_provider.triggers import vanceai as triggers

    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", str(HOLD_S))
    handed_at: list[float] = []

    def hand_over(elapsed, finished, left, concurrency, hold):  # the rest looks long after 2 items
        assert hold == pytest.approx(HOLD_S, abs=1.0) and left == 5 - finished
        if finished >= 2 and not handed_at:
            handed_at.append(time.time())
        return finished >= 2

    monkeypatch.setattr(_worker_window, "hand_over", hand_over)
    server = sim_factory(time_per_job=600.0)  # jobs finish only when the test moves the clock
    vance_conn(api, server=server)
    for i in range(5):
        make_image(f"ho/in/p{i}.jpg", 32, 24)
    src, dst = tmp_path / "ho" / "in", tmp_path / "ho" / "out"
    op = _operator(src, dst, max_concurrency=2)
    context = _context()
    join = _run_in_thread(lambda: _defer(op, context))
    asyncio.run(_processing(server, 2))
    first_two = set(server.state.jobs)
    server.state.clock.advance(600)  # the first window's two jobs finish: the worker collects them
    deferred = join()

    # The hand-over: the worker's two items stored and recorded, the rest in flight or pending.
    manifest = Manifest.for_destination(str(dst)).load()
    states = sorted(i.state.value for i in manifest.items.values())
    done_here = {i.job_id for i in manifest.items.values() if i.state == ItemState.DONE}
    assert done_here == first_two and len(states) == 5
    in_flight = {i.job_id for i in manifest.items.values() if i.state == ItemState.SUBMITTED}
    assert set(deferred.trigger.job_ids) == in_flight and len(in_flight) <= 2
    assert deferred.trigger.resume_after >= handed_at[0] + HOLD_S - 0.01  # held from the deferral
    looks_at_first_two = [r for r in server.state.requests if r.job in first_two]

    held: list[float] = []

    async def wait_until(when: float) -> None:
        held.append(when)

    monkeypatch.setattr(triggers, "wait_until", wait_until)
    trigger, _ = _rebuilt(deferred.trigger)

    async def run_to_the_end():
        task = asyncio.create_task(anext(trigger.run()))
        for _ in range(3000):  # every job that runs is let finish, until the batch is done
            if task.done():
                return task.result()
            if any(j.status == "processing" for j in list(server.state.jobs.values())):
                server.state.clock.advance(600)
            await asyncio.sleep(0.02)
        raise AssertionError("the trigger did not finish")

    event = asyncio.run(run_to_the_end())
    assert event.payload["status"] == "success"
    assert held == [deferred.trigger.resume_after]  # the event waited for the task's resume time
    summary = op.execute_complete(context, event=event.payload, **deferred.kwargs or {})
    assert summary["done"] == 5 and summary["failed"] == 0 and summary["credits_spent"] == 5.0
    _charged_once(server, 5)
    assert [r for r in server.state.requests if r.job in first_two] == looks_at_first_two  # not fetched again
    assert _peak_in_flight(server) <= 2


def test_killed_while_the_worker_runs_the_window(sim_factory, vance_conn, make_image, tmp_path, monkeypatch):
    """``on_kill`` while the window runs in the worker: the jobs in flight are canceled, their
    items pending in the manifest, nothing is paid, and the task fails as stopped."""
    import time

    from tests.core.helpers import manifest_job_ids
    from vance_provider.airflow_compat import AirflowException
    from vance_provider.core.state.manifest import ItemState, Manifest
    from vance_provider.operators import _worker_window

    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", str(HOLD_S))
    monkeypatch.setattr(_worker_window, "now", lambda: 0.0)  # the rest never looks long
    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    for i in range(4):
        make_image(f"kw/in/p{i}.jpg", 32, 24)
    src, dst = tmp_path / "kw" / "in", tmp_path / "kw" / "out"
    op = _operator(src, dst, max_concurrency=2)
    join = _run_in_thread(lambda: op.execute(_context()))
    for _ in range(1200):  # both jobs running, and their ids in the manifest on disk
        if len(manifest_job_ids(dst / "_vance_manifest.json")) == 2:
            break
        time.sleep(0.02)
    op.on_kill()
    with pytest.raises(AirflowException, match="VanceAI batch stopped: 2 job"):
        join()
    assert sorted(j.status for j in server.state.jobs.values()) == ["canceled", "canceled"]
    assert not server.state.charges()
    manifest = Manifest.for_destination(str(dst)).load()
    assert {i.state for i in manifest.items.values()} == {ItemState.PENDING}


def test_a_deadline_passed_in_the_worker_hands_the_batch_over(
    sim_factory, vance_conn, make_image, tmp_path, monkeypatch
) -> None:
    """The operator's ``timeout`` passes while the worker runs the window (its jobs held by the
    simulator): the batch is handed over with its jobs in flight, the trigger reports the timeout,
    and the task fails saying so; nothing is paid."""
    from vance_provider.airflow_compat import AirflowException
    from vance_provider.operators import _worker_window

    monkeypatch.setenv("AIRFLOW__VANCEAI__RESUME_AFTER_DEFERRAL", str(HOLD_S))
    monkeypatch.setattr(_worker_window, "now", lambda: 0.0)  # the rest never looks long
    server = sim_factory(time_per_job=600.0)
    vance_conn("open", server=server)
    for i in range(3):
        make_image(f"dl/in/p{i}.jpg", 32, 24)
    op = _operator(tmp_path / "dl" / "in", tmp_path / "dl" / "out", max_concurrency=2, timeout=0.5)
    context = _context()
    deferred = _defer(op, context)
    assert len(deferred.trigger.job_ids) <= 2 and deferred.trigger.end_time <= deferred.trigger.resume_after
    trigger, _ = _rebuilt(deferred.trigger)
    trigger.resume_after = None  # (the hold itself is tested above)
    event = asyncio.run(anext(trigger.run()))
    assert event.payload["status"] == "timeout"
    with pytest.raises(AirflowException, match="VanceAI batch timed out"):
        op.execute_complete(context, event=event.payload, **deferred.kwargs or {})
    assert not server.state.charges()
