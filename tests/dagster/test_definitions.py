"""The example project: it loads without network or secrets, validates with the Dagster CLI, and
its assets run in a real Dagster instance against the simulator."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from tests.dagster.conftest import TOKENS, scan_for

pytestmark = pytest.mark.dagster

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "dagster_project"
DEFINITIONS = PROJECT / "definitions.py"
DAGSTER = Path(sys.executable).parent / "dagster"
IN_PROCESS = '{"execution": {"config": {"in_process": {}}}}'


def load_example(name: str = "vance_example_definitions") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DEFINITIONS)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dagster_home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with the example's dagster.yaml (so its concurrency settings are validated too)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    return home


def test_example_loads_without_token_or_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VANCE_API_TOKEN", raising=False)
    # Nothing listens there: a call made while loading would fail.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VANCE_EXAMPLE_DATA", str(tmp_path / "nothing-here"))
    defs: dg.Definitions = load_example().defs
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {
        "photos_x2",
        "clips_x2",
        "s3_photos_x2",
        "s3_clips_x2",
        "vanceai_credit_usage",
        "visioncraft_photos_x2",
        "photos_yaml_x2",  # defs/photos_yaml_x2/defs.yaml, the component beside the Python assets
    }
    for key in ("photos_x2", "clips_x2", "s3_photos_x2", "s3_clips_x2"):
        node = graph.get(dg.AssetKey(key))
        assert node.pools == {"vanceai"}
        assert "vanceai" in node.kinds
        assert {c.name for c in graph.get_check_keys_for_assets({node.key})} >= {
            "outputs_valid",
            "inputs_accounted_for",
        }
    assert isinstance(graph.get(dg.AssetKey("s3_photos_x2")).partitions_def, dg.DynamicPartitionsDefinition)
    assert defs.resolve_sensor_def("s3_photos_x2_new_files").minimum_interval_seconds == 120
    assert defs.resolve_schedule_def("vanceai_credit_usage_daily").cron_schedule == "0 6 * * *"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VANCE_", "DAGSTER_"))}
    env.update(
        {
            "DAGSTER_HOME": str(dagster_home(tmp_path)),
            "DAGSTER_DISABLE_TELEMETRY": "yes",
            "PYTHONPATH": str(ROOT),
        },
        **extra,
    )
    return env


@pytest.mark.slow
def test_dagster_definitions_validate_cli(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(DAGSTER), "definitions", "validate", "-f", str(DEFINITIONS)],
        cwd=ROOT,
        env=_env(tmp_path, AWS_ENDPOINT_URL="http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All code locations passed validation" in proc.stdout + proc.stderr


def _materialize_photos_and_usage(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``dagster asset materialize`` of the example's photos_x2 and credit usage, in its own process."""
    proc = subprocess.run(
        [
            str(DAGSTER),
            "asset",
            "materialize",
            "-f",
            str(DEFINITIONS),
            "--select",
            "photos_x2,vanceai_credit_usage",
            "--config-json",
            IN_PROCESS,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_example_materializes_in_a_real_instance(
    sim: Any, tmp_path: Path, images: Any, s3_server: str
) -> None:
    """``dagster asset materialize`` in its own process, with a DAGSTER_HOME, against the simulator
    (and S3 on loopback, where the usage asset looks for the S3 datasets' manifests)."""
    data = tmp_path / "data"
    images("data/photos", 2)
    env = _env(
        tmp_path,
        VANCE_API_TOKEN=TOKENS["open"],
        VANCE_BASE_URL=sim.base_url,
        VANCE_EXAMPLE_DATA=str(data),
        VANCE_EXAMPLE_S3_PREFIX="s3://vance-example",
        AWS_ENDPOINT_URL=s3_server,
    )
    proc = _materialize_photos_and_usage(env)
    for name in ("p0.jpg", "p1.jpg"):
        with Image.open(data / "photos_x2" / name) as img:
            assert img.size[1] == 96
    assert len(sim.state.charges()) == 2 and sim.state.double_charges() == []

    home = Path(env["DAGSTER_HOME"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        record = instance.get_latest_materialization_event(dg.AssetKey("photos_x2"))
        assert record is not None
        md = record.asset_materialization.metadata
        assert md["vance/done"].value == 2 and md["vance/credits_spent"].value == 2.0
        usage = instance.get_latest_materialization_event(dg.AssetKey("vanceai_credit_usage"))
        assert usage.asset_materialization.metadata["vance/credits_total"].value == 2.0
        assert scan_for(instance, TOKENS["open"], home) == []
    assert TOKENS["open"] not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_example_credit_usage_runs_locally_without_aws_credentials(
    sim: Any, tmp_path: Path, images: Any
) -> None:
    """The example tried as a newcomer does: local folders only, no AWS credentials anywhere; the
    credit usage report finishes (it reads the S3 datasets' manifests only once an S3 prefix is set)."""
    data = tmp_path / "data"
    images("data/photos", 1)
    env = {k: v for k, v in _env(tmp_path).items() if not k.startswith("AWS_")}
    env.update(
        VANCE_API_TOKEN=TOKENS["open"],
        VANCE_BASE_URL=sim.base_url,
        VANCE_EXAMPLE_DATA=str(data),
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    proc = _materialize_photos_and_usage(env)
    assert "NoCredentialsError" not in proc.stdout + proc.stderr
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        usage = instance.get_latest_materialization_event(dg.AssetKey("vanceai_credit_usage"))
        assert usage.asset_materialization.metadata["vance/credits_total"].value == 1.0


def test_example_visioncraft_asset_materializes(sim, tmp_path, monkeypatch) -> None:
    """The example's VisionCraft dataset: the same factory, the second vendor, against the simulator."""
    import importlib.util

    from PIL import Image

    from vance_provider.sim import DEMO_VISIONCRAFT_TOKEN

    data = tmp_path / "data"
    (data / "photos").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (40 + i, 30), (i * 60, 90, 160)).save(data / "photos" / f"p{i}.jpg")
    monkeypatch.setenv("VANCE_EXAMPLE_DATA", str(data))
    monkeypatch.setenv("VISIONCRAFT_API_TOKEN", DEMO_VISIONCRAFT_TOKEN)
    monkeypatch.setenv("VISIONCRAFT_BASE_URL", sim.base_url)
    path = Path(__file__).resolve().parents[2] / "examples" / "dagster_project" / "definitions.py"
    spec = importlib.util.spec_from_file_location("example_defs_vc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = dg.materialize(
        [module.defs.resolve_assets_def("visioncraft_photos_x2")],  # resources bound by the project's defs
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    outputs = sorted((data / "visioncraft_photos_x2").glob("p*.*"))
    assert len(outputs) == 2
    for out in outputs:
        with Image.open(out) as img:
            assert img.width > 40
    assert all(DEMO_VISIONCRAFT_TOKEN not in r.url for r in sim.state.requests)


@pytest.mark.slow
def test_dg_check_defs_validates_the_project() -> None:
    """The example is a real `dg` project: a defs/ folder with a defs.yaml component beside Python assets."""
    assert (PROJECT / "vance_example" / "defs" / "photos_yaml_x2" / "defs.yaml").is_file()
    assert (PROJECT / "vance_example" / "defs" / "datasets.py").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VANCE_", "DAGSTER_HOME"))}
    # This environment is the project's: dg >= 1.12 asks for it with --use-active-venv, 1.11 uses
    # the active (first on PATH) environment anyway.
    dg_bin = DAGSTER.parent / "dg"
    env.update(
        PATH=f"{dg_bin.parent}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(dg_bin.parent.parent)
    )
    flags = subprocess.run([str(dg_bin), "check", "defs", "--help"], capture_output=True, text=True).stdout
    proc = subprocess.run(
        [str(dg_bin), "check", "defs", *(["--use-active-venv"] if "--use-active-venv" in flags else [])],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr


def _dg(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    dg_bin = DAGSTER.parent / "dg"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VANCE_", "DAGSTER_HOME"))}
    base.update(
        PATH=f"{dg_bin.parent}{os.pathsep}{base.get('PATH', '')}", VIRTUAL_ENV=str(dg_bin.parent.parent)
    )
    return subprocess.run(
        [str(dg_bin), *args],
        cwd=PROJECT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_the_example_lists_the_component_once() -> None:
    proc = _dg("list", "components", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = json.loads(proc.stdout)
    items = items["items"] if isinstance(items, dict) else items
    listed = [c["key"] for c in items if "VanceDatasetComponent" in c["key"]]
    assert listed == ["dagster_vance.VanceDatasetComponent"]


@pytest.mark.slow
def test_dg_launch_runs_an_asset_of_the_example(sim: Any, tmp_path: Path) -> None:
    """`dg launch --assets ...` from the project's folder: the project's package imports (no
    ModuleNotFoundError) and the asset materializes against the simulator."""
    from tests.conftest import OPEN_KEY

    data = tmp_path / "data"
    (data / "photos").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (40 + i, 30), (i * 60, 90, 160)).save(data / "photos" / f"p{i}.jpg")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        "VANCE_API_TOKEN": OPEN_KEY,
        "VANCE_BASE_URL": sim.base_url,
        "VANCE_EXAMPLE_DATA": str(data),
        "DAGSTER_HOME": str(home),
    }
    proc = _dg("launch", "--assets", "photos_x2", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RUN_SUCCESS" in proc.stdout + proc.stderr
    assert sorted(p.name for p in (data / "photos_x2").glob("p*.jpg")) == ["p0.jpg", "p1.jpg"]
    assert (data / "photos_x2" / "_vance_preview" / "_vance_contact_sheet.jpg").is_file()


def test_registered_with_dagsters_library_registry() -> None:
    from dagster_shared.libraries import DagsterLibraryRegistry

    import dagster_vance

    assert DagsterLibraryRegistry.get()["dagster-vance"] == dagster_vance.__version__


@pytest.mark.parametrize("prefix", [None, "s3://my-bucket/vance"])
def test_the_per_file_dataset_is_not_an_empty_green_square(
    monkeypatch: pytest.MonkeyPatch, prefix: str | None
) -> None:
    """s3_photos_x2 has no partition until its sensor lists the files: the sensor is on once an S3
    prefix is given, and the description says what "0 partitions" means."""
    if prefix:
        monkeypatch.setenv("VANCE_EXAMPLE_S3_PREFIX", prefix)
    else:
        monkeypatch.delenv("VANCE_EXAMPLE_S3_PREFIX", raising=False)
    defs = load_example().defs
    sensor = defs.resolve_sensor_def("s3_photos_x2_new_files")
    wanted = dg.DefaultSensorStatus.RUNNING if prefix else dg.DefaultSensorStatus.STOPPED
    assert sensor.default_status == wanted
    spec = defs.resolve_assets_def("s3_photos_x2").specs_by_key[dg.AssetKey("s3_photos_x2")]
    assert "s3_photos_x2_new_files" in (spec.description or "") and "0 partitions" in (spec.description or "")


def test_workspace_names_the_code_location_as_the_project_does() -> None:
    """`dagster dev -w workspace.yaml` and `dg dev` name the location alike: no name-mismatch warning."""
    import tomllib

    import yaml

    workspace = yaml.safe_load((PROJECT / "workspace.yaml").read_text())
    [entry] = workspace["load_from"]
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["dg"]["project"]
    assert entry["python_file"]["location_name"] == project["code_location_name"] == "vance_example"
    assert (PROJECT / entry["python_file"]["relative_path"]).is_file()
