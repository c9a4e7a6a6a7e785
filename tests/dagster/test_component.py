"""VanceDatasetComponent: a dataset declared in YAML loads, renders env templates and materializes."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox
from PIL import Image

from dagster_vance import VanceDatasetComponent
from tests.dagster.conftest import TOKENS, checks, materialization
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster

RESOURCES = """
import os

import dagster as dg

from dagster_vance import VanceAIResource


@dg.definitions
def resources():
    return dg.Definitions(resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"),
                                                                base_url=os.environ["VANCE_BASE_URL"])})
"""


# A dataset of two photos in $PHOTOS_ROOT/in (the ``photos_root`` fixture), as a defs.yaml writes it.
DATASET = {
    "name": "yaml_photos",
    "source": "{{ env.PHOTOS_ROOT }}/in",
    "destination": "{{ env.PHOTOS_ROOT }}/out",
    "tool": "upscale",
    "config": {"scale": 2},
    "poll_interval": 0.05,
}


@pytest.fixture
def photos_root(sim: SimulatorServer, use_token: Any, images: Any, tmp_path: Path, monkeypatch: Any) -> Path:
    """Two photos in ``$PHOTOS_ROOT/in``, the open API's token in VANCE_API_TOKEN and the simulator's
    URL in VANCE_BASE_URL; returns the photos' folder."""
    use_token("open")
    src = images("in", 2)
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    monkeypatch.setenv("PHOTOS_ROOT", str(tmp_path))
    return src


@pytest.mark.slow
def test_yaml_dataset_with_sensor_materializes(
    sim: SimulatorServer, instance: dg.DagsterInstance, photos_root: Path, tmp_path: Path, monkeypatch: Any
) -> None:
    src = photos_root
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    attributes = {
        **DATASET,
        "credit_budget": 10,
        "partitions": "per_file",
        "sensor_interval_seconds": 45,
        "storage_options": {"client_kwargs": {"endpoint_url": "{{ env.AWS_ENDPOINT_URL }}"}},
    }
    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(
            component_cls=VanceDatasetComponent,
            defs_yaml_contents={"type": "dagster_vance.VanceDatasetComponent", "attributes": attributes},
        )
        (sandbox.defs_folder_path / "resources.py").write_text(RESOURCES)
        with sandbox.build_component_tree() as tree:
            # Dagster 1.11/1.12 name it load_component_at_path; 1.13 load_component.
            load = getattr(tree, "load_component", None) or tree.load_component_at_path
            component = load(path)
            assert isinstance(component, VanceDatasetComponent)
            assert component.source == f"{src}" and component.config == {"scale": 2}
            defs = tree.build_defs()
        sensor = defs.resolve_sensor_def("yaml_photos_new_files")
        assert sensor.minimum_interval_seconds == 45
        asset = defs.resolve_assets_def("yaml_photos")
        assert asset.op.pool == "vanceai"

        instance.add_dynamic_partitions("yaml_photos_files", ["p0.jpg", "p1.jpg"])
        job = defs.resolve_implicit_global_asset_job_def()
        for key in ("p0.jpg", "p1.jpg"):
            result = job.execute_in_process(instance=instance, partition_key=key)
            assert result.success
            assert all(c.passed for c in checks(result).values())
    assert materialization(result, "yaml_photos")["vance/partition"] == "p1.jpg"
    with Image.open(tmp_path / "out" / "p1.jpg") as img:
        assert img.size == (144, 96)
    assert len(sim.state.charges()) == 2


def test_component_without_partitions_has_no_sensor(tmp_path: Path) -> None:
    from dagster.components.testing.utils import component_defs

    component = VanceDatasetComponent.from_attributes_dict(
        attributes={
            "name": "flat",
            "source": str(tmp_path),
            "destination": str(tmp_path / "o"),
            "tool": "denoise",
        }
    )
    defs = component_defs(component=component, resources={"vanceai": dg.ResourceDefinition.none_resource()})
    assert [a.key for a in defs.assets] == [dg.AssetKey("flat")]  # type: ignore[union-attr]
    assert not list(defs.sensors or [])


@pytest.mark.slow
def test_dg_lists_the_component_and_scaffolds_a_useful_defs_yaml(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from dagster_vance.component import SCAFFOLD_ATTRIBUTES

    dg_cli = Path(sys.executable).parent / "dg"
    listed = subprocess.run(
        [str(dg_cli), "list", "components", "--json"], capture_output=True, text=True, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "dagster_vance.VanceDatasetComponent" in listed.stdout  # the registry entry point

    with create_defs_folder_sandbox() as sandbox:
        path = sandbox.scaffold_component(component_cls=VanceDatasetComponent, defs_path="holiday_photos")
        written = yaml.safe_load((path / "defs.yaml").read_text())
    assert written["type"] in (
        "dagster_vance.VanceDatasetComponent",
        "dagster_vance.component.VanceDatasetComponent",
    )
    assert written["attributes"] == {**SCAFFOLD_ATTRIBUTES, "name": "holiday_photos"}
    # Every field is described (dg's schema and docs show these).
    fields = VanceDatasetComponent.model_fields
    assert all(f.description for f in fields.values()), [n for n, f in fields.items() if not f.description]


@pytest.mark.slow
def test_yaml_dataset_with_its_resource_and_translation(
    sim: SimulatorServer, instance: dg.DagsterInstance, photos_root: Path
) -> None:
    """The account and the asset's attributes in YAML, as Dagster's own integration components take
    them: the token stays an environment variable (only its name is stored)."""
    token = TOKENS["open"]
    attributes = {
        **DATASET,
        "vanceai": {"api_token": "{{ env.VANCE_API_TOKEN }}", "base_url": "{{ env.VANCE_BASE_URL }}"},
        "translation": {"group_name": "media", "key": "media/{{ props.name }}", "owners": ["team:photo"]},
    }
    with create_defs_folder_sandbox() as sandbox:
        sandbox.scaffold_component(
            component_cls=VanceDatasetComponent,
            defs_yaml_contents={"type": "dagster_vance.VanceDatasetComponent", "attributes": attributes},
        )
        with sandbox.build_component_tree() as tree:
            defs = tree.build_defs()
    key = dg.AssetKey(["media", "yaml_photos"])
    asset = defs.resolve_assets_def(key)
    spec = asset.specs_by_key[key]
    assert spec.group_name == "media" and spec.owners == ["team:photo"]
    assert "vanceai" in spec.kinds  # the default spec's attributes stay unless translated
    resource = (defs.resources or {})["vanceai"]
    assert isinstance(resource.api_token, dg.EnvVar) and resource.api_token.env_var_name == "VANCE_API_TOKEN"
    assert token not in repr(defs.resources)
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance)
    assert result.success
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    assert event.materialization.metadata["vance/done"].value == 2
    assert len(sim.state.charges()) == 2


def test_unset_environment_variables_are_named(tmp_path: Path, monkeypatch: Any) -> None:
    from dagster.components.resolved.errors import ResolutionException

    monkeypatch.delenv("VANCE_SOURCE", raising=False)
    monkeypatch.delenv("VANCE_DESTINATION", raising=False)
    from dagster_vance.component import SCAFFOLD_ATTRIBUTES

    with create_defs_folder_sandbox() as sandbox:
        sandbox.scaffold_component(
            component_cls=VanceDatasetComponent,
            defs_yaml_contents={
                "type": "dagster_vance.VanceDatasetComponent",
                "attributes": SCAFFOLD_ATTRIBUTES,
            },
        )
        with pytest.raises(Exception) as raised, sandbox.build_component_tree() as tree:
            tree.build_defs()
    text = "".join(str(e) for e in _chain(raised.value))
    assert "VANCE_DESTINATION, VANCE_SOURCE not set" in text
    assert "source (VANCE_SOURCE), destination (VANCE_DESTINATION)" in text
    assert isinstance(next(e for e in _chain(raised.value) if "not set" in str(e)), ResolutionException)


def _chain(exc: BaseException | None) -> list[BaseException]:
    found = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found
