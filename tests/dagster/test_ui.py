"""What users see in the Dagster UI: before/after thumbnails (bounded, optional), progress that
reads well at 1000 items, readable dataset metadata, the credit report's tables and its check."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from PIL import Image

from dagster_vance import build_credit_usage_asset, build_enhanced_dataset_asset
from dagster_vance.credit_usage import CREDIT_COLUMN_DESCRIPTIONS, _usage_check
from dagster_vance.materialize import ProgressLog
from dagster_vance.translator import PROPS_METADATA_KEY, dataset_props
from tests.dagster.conftest import materialization, vance_resource
from vance_provider.core import Progress
from vance_provider.core.reports.preview import MAX_INLINE_BYTES, PREVIEW_NAME
from vance_provider.sim import SimulatorServer

pytestmark = pytest.mark.dagster


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


class _Context:
    def __init__(self) -> None:
        self.log = _Log()


def test_progress_at_1000_items_is_about_ten_lines() -> None:
    context = _Context()
    progress = ProgressLog(context, every_s=3600)  # type: ignore[arg-type]
    p = Progress(total=1000)
    for i in range(1000):
        if i % 7 == 0:
            p.failed += 1
        else:
            p.done += 1
        p.credits_spent = float(p.done)
        progress(p)
        progress(p)  # the engine may report the same count again: no second line
    lines = context.log.lines
    assert 9 <= len(lines) <= 11, lines
    assert lines[0].startswith("VanceAI: 100/1000 finished")
    assert lines[-1].startswith("VanceAI: 1000/1000 finished (857 done, 143 failed, 0 skipped)")


def test_progress_also_every_n_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 10_000, 40))  # 40 s between two items
    monkeypatch.setattr("dagster_vance.materialize.time.monotonic", lambda: float(next(clock)))
    context = _Context()
    progress = ProgressLog(context, every_s=30)  # type: ignore[arg-type]
    p = Progress(total=1000)
    for _ in range(5):
        p.done += 1
        progress(p)
    assert len(context.log.lines) == 5  # slow items: one line each 30 s at most, not one per tenth


def _jpeg(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.slow
@pytest.mark.parametrize("off", [None, "dataset", "resource"])
def test_thumbnails_in_the_materialization_bounded_and_optional(
    sim: SimulatorServer,
    instance: dg.DagsterInstance,
    use_token: Any,
    images: Any,
    tmp_path: Path,
    off: str | None,
) -> None:
    use_token("open")
    src = images("in", 8, width=320, height=240)
    out = tmp_path / "out"
    options: dict[str, Any] = {"preview": False} if off == "dataset" else {}
    photos = build_enhanced_dataset_asset(
        "photos", str(src), str(out), "upscale", {"scale": 2}, poll_interval=0.05, **options
    )
    resource = vance_resource(sim, **({"previews": False} if off == "resource" else {}))
    result = dg.materialize([photos], resources={"vanceai": resource}, instance=instance)
    assert result.success
    md = materialization(result, "photos")
    table = md["vance/preview"]
    assert "| p0.jpg | p0.jpg | 320x240 -> 640x480 |" in table  # names and sizes, always
    sheet = out / PREVIEW_NAME
    if off:
        assert "data:image" not in table and "vance/preview_image" not in md
        assert not sheet.exists()
        return
    # Five rows (preview_rows), each with a before and an after thumbnail inline, bounded.
    assert table.count("data:image/jpeg;base64,") == 10
    assert len(table) <= MAX_INLINE_BYTES
    first = table.split("data:image/jpeg;base64,")[2].split(")")[0]
    import base64

    assert max(_jpeg(base64.b64decode(first)).size) <= 96
    # The contact sheet beside the outputs: small, linked, and not an output or input itself.
    assert md["vance/preview_image"] == str(sheet)
    data = sheet.read_bytes()
    assert len(data) < 200_000 and max(_jpeg(data).size) <= 1200
    assert md["vance/inputs"] == 8 and sorted(p.name for p in out.glob("p*.jpg")) == [
        f"p{i}.jpg" for i in range(8)
    ]
    again = dg.materialize([photos], resources={"vanceai": resource}, instance=instance)
    assert materialization(again, "photos")["vance/inputs"] == 8  # the sheet is no input


def test_dataset_metadata_is_what_the_user_set() -> None:
    photos = build_enhanced_dataset_asset(
        "photos", "s3://in/photos/", "s3://out/x2/", "upscale", {"scale": 2}, credit_budget=50
    )
    spec = photos.specs_by_key[dg.AssetKey("photos")]
    shown = spec.metadata[PROPS_METADATA_KEY].value
    assert shown == {
        "name": "photos",
        "source": "s3://in/photos/",
        "destination": "s3://out/x2/",
        "tool": "upscale",
        "config": {"scale": 2},
        "credit_budget": 50,
    }
    assert "jconfig" not in json.dumps(shown) and "storage_resource_key" not in json.dumps(shown)
    props = dataset_props(photos)  # read back whole: the defaults fill in
    assert props.credit_budget == 50 and props.resource_key == "vanceai" and props.preview is True


def test_credit_report_columns_are_described() -> None:
    from vance_provider.core.reports.credits import COLUMNS

    usage = build_credit_usage_asset()
    schema = usage.specs_by_key[usage.key].metadata["dagster/column_schema"]
    assert [c.name for c in schema.columns] == list(COLUMNS) and len(COLUMNS) == 13
    assert all(c.description for c in schema.columns)
    assert set(CREDIT_COLUMN_DESCRIPTIONS) == set(COLUMNS)
    assert [c.name for c in usage.check_specs] == ["matches_datasets_spend"]


def test_usage_check_fails_when_the_report_misses_a_charge(tmp_path: Path) -> None:
    from vance_provider.core.state.manifest import ItemState, Manifest, ManifestItem

    url = str(tmp_path / "_vance_manifest.json")
    manifest = Manifest(url)
    for i, credits in enumerate((1.0, 2.0)):
        manifest.items[f"/in/p{i}.jpg"] = ManifestItem(
            f"/in/p{i}.jpg", "f", "c", f"/out/p{i}.jpg", ItemState.DONE, f"j{i}", credits=credits
        )
    manifest.save()
    full = pd.DataFrame({"batch": [url, url, "other"], "credits": [1.0, 2.0, 7.0]})
    assert _usage_check("usage", full, [url]).passed
    short = full.iloc[1:]
    check = _usage_check("usage", short, [url])
    assert not check.passed and check.metadata["vance/reported_for_datasets"].value == 2.0


@pytest.mark.parametrize("cls", ["VanceAIResource", "VanceStorageResource"])
def test_resource_description_reads_as_text(cls: str) -> None:
    """Dagster shows a resource's docstring, as Markdown, as its description: one paragraph, no
    reST example (an indented block after a blank line would be a cut code block)."""
    import dagster_vance

    resource_cls = getattr(dagster_vance, cls)
    shown = resource_cls.__doc__ or ""
    assert len(shown) > 80
    assert "::" not in shown and "\n\n" not in shown.strip() and "Example" not in shown
    assert all(len(line) <= 100 for line in shown.splitlines())
