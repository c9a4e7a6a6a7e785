"""Small pieces of the Dagster face: URL scrubbing, metadata locations, probing, the translator."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from dagster_vance import (
    VanceDatasetProps,
    VanceTranslator,
    build_enhanced_dataset_asset,
    dataset_props,
    probe,
)
from dagster_vance.translator import location_metadata, strip_query
from tests.conftest import image_bytes
from tests.dagster.conftest import checks, materialization, vance_resource
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster


def test_strip_query_removes_signed_parts() -> None:
    text = "failed at https://h.example/r/job_1?expires=99&sign=abcdef and s3://b/k?X-Amz-Signature=zz done"
    clean = strip_query(text)
    assert clean == "failed at https://h.example/r/job_1 and s3://b/k done"
    assert strip_query("no urls here?") == "no urls here?"


def test_location_metadata() -> None:
    assert location_metadata("/data/out") == dg.MetadataValue.path("/data/out")
    assert location_metadata("file:///data/out") == dg.MetadataValue.path("/data/out")
    assert location_metadata("s3://bucket/out/?versionId=1") == dg.MetadataValue.url("s3://bucket/out/")


def test_probe_images_and_video(tmp_path: Path, test_video: Path) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(image_bytes(30, 20, "PNG"))
    info = probe(str(png))
    assert (info.format, info.width, info.height) == ("png", 30, 20)
    video = probe(str(test_video))
    assert (video.format, video.width, video.height) == ("mp4", 64, 48) and video.frames == 1
    broken = tmp_path / "b.jpg"
    broken.write_bytes(image_bytes()[:150])
    with pytest.raises(OSError):
        probe(str(broken))


def test_translator_can_be_overridden(tmp_path: Path) -> None:
    class Prefixed(VanceTranslator):
        def get_asset_spec(self, props: VanceDatasetProps) -> dg.AssetSpec:
            spec = super().get_asset_spec(props)
            return spec.replace_attributes(key=["media", props.name], owners=["team:ml"])

    asset = build_enhanced_dataset_asset(
        "thumbs",
        str(tmp_path),
        str(tmp_path / "o"),
        "upscale",
        credit_budget=5,
        translator=Prefixed(),
        storage_options={"client_kwargs": {"region_name": "eu-west-1"}},
    )
    assert asset.key == dg.AssetKey(["media", "thumbs"])
    spec = asset.specs_by_key[asset.key]
    assert spec.owners == ["team:ml"] and spec.kinds == {"vanceai", "image"}
    assert spec.metadata["vance/tool"] == "upscale"
    assert {c.name for c in asset.check_specs} == {
        "outputs_valid",
        "inputs_accounted_for",
        "credits_within_budget",
    }
    props = dataset_props(asset)  # read back from the spec's metadata
    assert props.credit_budget == 5 and props.storage_options == {
        "client_kwargs": {"region_name": "eu-west-1"}
    }
    # Credentials in the definitions are refused: they come from a storage resource at run time.
    for secret in ({"key": "s3cr3t"}, {"client_kwargs": {"aws_secret_access_key": "s3cr3t"}}):
        with pytest.raises(dg.DagsterInvalidDefinitionError, match="storage_resource_key") as exc:
            build_enhanced_dataset_asset(
                "leaky", str(tmp_path), str(tmp_path / "o"), "upscale", storage_options=secret
            )
        assert "s3cr3t" not in str(exc.value)


def test_an_empty_source_is_an_empty_dataset(
    sim: SimulatorServer, instance: dg.DagsterInstance, use_token: Any, tmp_path: Path
) -> None:
    use_token("open")
    (tmp_path / "empty").mkdir()
    asset = build_enhanced_dataset_asset("empty", str(tmp_path / "empty"), str(tmp_path / "o"), "upscale")
    result = dg.materialize([asset], instance=instance, resources={"vanceai": vance_resource(sim)})
    md = materialization(result, "empty")
    assert (md["vance/inputs"], md["vance/done"], md["vance/credits_spent"]) == (0, 0, 0.0)
    assert all(c.passed for c in checks(result).values())

    strict = build_enhanced_dataset_asset(
        "strict_empty", str(tmp_path / "empty"), str(tmp_path / "o2"), "upscale", allow_empty=False
    )
    failed = dg.materialize(
        [strict], instance=instance, resources={"vanceai": vance_resource(sim)}, raise_on_error=False
    )
    assert not failed.success
    assert sim.state.ledger == []


def test_dataset_options_are_declared_once() -> None:
    """The props, the factory's keyword arguments and the component's attributes are the options
    of ``DatasetOptions``: the same names, types and defaults."""
    import dataclasses
    import typing

    from dagster_vance import VanceDatasetComponent
    from dagster_vance.assets import DatasetKwargs
    from dagster_vance.options import ASSET_ONLY_OPTIONS, DatasetOptions

    declared = {f.name: f for f in dataclasses.fields(DatasetOptions)}
    hints = typing.get_type_hints(DatasetOptions)
    kwargs = typing.get_type_hints(DatasetKwargs)
    assert set(kwargs) == set(declared) | set(ASSET_ONLY_OPTIONS)
    assert all(kwargs[name] == hints[name] for name in declared)
    props = {f.name: f for f in dataclasses.fields(VanceDatasetProps)}
    assert all(props[name].default == f.default for name, f in declared.items())
    component = VanceDatasetComponent.model_fields
    for name, f in declared.items():
        assert component[name].default == f.default
        assert component[name].description == f.metadata["description"]


def test_dagster_face_has_no_import_circle() -> None:
    """No module of dagster_vance imports, directly or through others, one that imports it."""
    import ast

    root = Path(__file__).resolve().parents[2] / "dagster_vance"
    graph: dict[str, set[str]] = {}
    for path in root.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
        graph[path.stem] = names - {path.stem}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    circles = sorted(m for m in graph if m != "__init__" and reaches(m, m, {m}))
    assert circles == []
