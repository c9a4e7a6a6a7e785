"""Airflow >= 3.3's task state store: a retried submit task waits for the job its earlier try
submitted instead of submitting again (the web API has no idempotency key to find it by)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.core.helpers import created_jobs, release_held_jobs

HOLD = 600.0  # simulator seconds a job runs until the test releases it


class _TI:
    def __init__(self, try_number: int) -> None:
        self.pushed: dict[str, object] = {}
        self.dag_id, self.task_id, self.run_id, self.map_index = "d", "t", "r", -1
        self.try_number = try_number

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


class _Store:
    """The task state store's two calls, as ``ResumableJobMixin`` uses them."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


def _operator(src: Path, dst: Path, **kwargs: Any) -> Any:
    from vance_provider.operators.vanceai import VanceAISubmitJobOperator

    return VanceAISubmitJobOperator(
        task_id="t",
        source=str(src),
        destination=str(dst),
        tool="upscale",
        deferrable=False,
        poll_interval=0.05,
        cancel_on_timeout=False,
        **kwargs,
    )


def _open_api_and_input(sim_factory: Any, vance_conn: Any, tmp_path: Path) -> tuple[Any, Path]:
    """A quick simulator behind the Open API connection, and one input image."""
    sim = sim_factory()
    vance_conn("open", server=sim)
    src = tmp_path / "in.jpg"
    Image.new("RGB", (32, 32), "teal").save(src)
    return sim, src


@pytest.mark.parametrize("api", ["web", "open"])
def test_a_retry_reattaches_to_the_earlier_try_s_job(
    api: str, sim_factory: Any, vance_conn: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vance_provider.airflow_compat import AirflowException
    from vance_provider.operators.vanceai import JOB_STATE_KEY

    sim = sim_factory(time_per_job=HOLD)
    vance_conn(api, server=sim)
    src = tmp_path / "in.jpg"
    Image.new("RGB", (32, 32), "teal").save(src)
    store = _Store()

    # Try 1 submits, then gives up waiting (its own timeout; the job is left running).
    with pytest.raises(AirflowException, match="did not finish in time"):
        _operator(src, tmp_path / "out.jpg", timeout=0.3).execute({"ti": _TI(1), "task_state_store": store})
    [job_id] = created_jobs(sim)
    assert store.values == {JOB_STATE_KEY: job_id}

    # Try 2 finds the job in the store and waits for it: no second submission.
    ti = _TI(2)
    release_held_jobs(sim, HOLD)
    record = _operator(src, tmp_path / "out.jpg").execute({"ti": ti, "task_state_store": store})
    assert record["id"] == job_id and ti.pushed["job_id"] == job_id
    assert created_jobs(sim) == [job_id]
    assert Path(record["output"]).read_bytes()[:3] == b"\xff\xd8\xff"


def test_an_earlier_job_that_is_gone_is_submitted_again(
    sim_factory: Any, vance_conn: Any, tmp_path: Path
) -> None:
    from vance_provider.operators.vanceai import JOB_STATE_KEY

    sim, src = _open_api_and_input(sim_factory, vance_conn, tmp_path)
    store = _Store()
    store.set(JOB_STATE_KEY, "job_that_does_not_exist")
    record = _operator(src, tmp_path / "out.jpg").execute({"ti": _TI(2), "task_state_store": store})
    [job_id] = created_jobs(sim)
    assert record["id"] == job_id and store.values[JOB_STATE_KEY] == job_id


def test_without_a_store_each_try_submits_as_before(
    sim_factory: Any, vance_conn: Any, tmp_path: Path
) -> None:
    """Airflow < 3.3 has no task state store: the job is submitted as before."""
    sim, src = _open_api_and_input(sim_factory, vance_conn, tmp_path)
    record = _operator(src, tmp_path / "out.jpg").execute({"ti": _TI(1)})
    assert created_jobs(sim) == [record["id"]]
