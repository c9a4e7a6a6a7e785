"""The batch operator on the second vendor (VisionCraft), with dag.test() against the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.airflow.helpers import all_xcoms, load_dag, ti_states, xcom
from vance_provider.sim import DEMO_VISIONCRAFT_TOKEN

pytestmark = pytest.mark.slow  # a whole dag.test()


def test_visioncraft_batch_dag(sim, vance_conn, make_image, tmp_path) -> None:
    token = vance_conn("visioncraft", token=DEMO_VISIONCRAFT_TOKEN, conn_id="visioncraft_default")
    for i in range(3):
        make_image(f"in/photo_{i}.jpg", 40, 30)
    dag = load_dag("vanceai_visioncraft_upscale")
    dr = dag.test(run_conf={"source": str(tmp_path / "in"), "destination": str(tmp_path / "out")})
    assert ti_states(dr) == {"upscale": "success"}
    summary = xcom(dr, "upscale")
    assert summary["done"] == 3 and summary["failed"] == 0
    src = Image.open(tmp_path / "in" / "photo_0.jpg").size
    for out in summary["outputs"]:
        with Image.open(out) as img:
            assert img.width > src[0] and img.height > src[1]  # upscaled
    assert all(token not in repr(v) for _, _, v in all_xcoms(dr))
    vc_requests = [r for r in sim.state.requests if not r.path.startswith(("/api/", "/web_api/"))]
    assert vc_requests and all(token not in r.url for r in vc_requests)
    assert Path(summary["manifest"]).exists()
