"""The wheel, as a user installs it: built with ``uv build``, installed into a fresh virtualenv;
Airflow's provider entry point and ``dg``'s component registry entry point are in it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts processes of its own

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"

CHECK = """
import json, importlib.metadata as md
dist = md.distribution("vance-pipelines")
eps = {(e.group, e.name): e.value for e in dist.entry_points}
print(json.dumps({"version": dist.version, "eps": [list(k) + [v] for k, v in eps.items()],
                  "extras": sorted(dist.metadata.get_all("Provides-Extra") or []),
                  "files": sorted(str(f) for f in dist.files if str(f).endswith(".py"))}))
"""


@pytest.mark.skipif(not UV.exists(), reason="needs the project's uv (make env)")
def test_built_wheel_installs_with_its_entry_points(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [str(UV), "build", "--wheel", "--out-dir", str(dist), str(ROOT)], check=True, capture_output=True
    )
    [wheel] = dist.glob("vance_pipelines-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([str(UV), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--no-deps", "--python", str(python), str(wheel)],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(python), "-c", CHECK], check=True, capture_output=True, text=True)
    info = json.loads(out.stdout)
    eps = {(g, n): v for g, n, v in info["eps"]}
    assert eps[("apache_airflow_provider", "provider_info")] == (
        "vance_provider.get_provider_info:get_provider_info"
    )
    assert eps[("dagster_dg_cli.registry_modules", "dagster_vance")] == "dagster_vance"
    assert eps[("console_scripts", "vance")] == "vance_provider.cli:main"
    assert {"airflow", "dagster", "openlineage", "s3", "sim"} <= set(info["extras"])
    assert "vance_provider/airflow_compat.py" in info["files"]
    assert "dagster_vance/component.py" in info["files"]
    assert not [f for f in info["files"] if f.startswith("tests/")]
