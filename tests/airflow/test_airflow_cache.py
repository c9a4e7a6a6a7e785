"""The result cache from Airflow: two DAG runs over two folders holding the same files, one cache."""

from __future__ import annotations

import shutil

import pytest

from tests.airflow.helpers import load_dag, rendered_fields, ti_states, xcom


@pytest.mark.slow
@pytest.mark.parametrize("api", ["open", "web"])
def test_second_folder_served_from_cache(api, sim, vance_conn, make_image, tmp_path) -> None:
    token = vance_conn(api)
    for i in range(3):
        make_image(f"in_a/photo_{i}.jpg", 64 + 8 * i, 48)
    shutil.copytree(tmp_path / "in_a", tmp_path / "in_b")  # the same files, another folder
    cache = tmp_path / "vance-cache"
    dag = load_dag("vanceai_credit_checked_batch")
    enhance = dag.get_task("enhance")
    enhance.deferrable = False
    enhance.poll_interval = 0.05
    enhance.cache = "{{ '" + str(cache) + "' }}"  # a templated field

    first = dag.test(run_conf={"source": str(tmp_path / "in_a"), "destination": str(tmp_path / "out_a")})
    assert ti_states(first) == {"check_credits": "success", "enhance": "success"}
    s1 = xcom(first, "enhance")
    assert (s1["done"], s1["cached"], s1["credits_spent"], s1["credits_saved"]) == (3, 0, 3.0, 0.0)
    assert len(sim.state.charges()) == 3
    requests_before = len(sim.state.requests)

    second = dag.test(run_conf={"source": str(tmp_path / "in_b"), "destination": str(tmp_path / "out_b")})
    assert ti_states(second)["enhance"] == "success"
    s2 = xcom(second, "enhance")
    assert (s2["done"], s2["cached"], s2["credits_spent"]) == (3, 3, 0.0)
    assert s2["credits_saved"] == pytest.approx(3.0)
    assert len(sim.state.charges()) == 3 and not sim.state.double_charges()  # the second run paid 0
    # Only the credit check (a balance look-up) talked to the service; no upload, no job.
    new_paths = {r.path for r in list(sim.state.requests)[requests_before:]}
    assert not any("upload" in p or "jobs" in p or "transform" in p for p in new_paths), new_paths
    for i in range(3):
        a, b = tmp_path / "out_a" / f"photo_{i}.jpg", tmp_path / "out_b" / f"photo_{i}.jpg"
        assert a.read_bytes() == b.read_bytes()
    assert any(str(cache) == (f.get("cache") or "") for f in rendered_fields(second))
    for run in (first, second):
        assert token not in repr(xcom(run, "enhance"))
