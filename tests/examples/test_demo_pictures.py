"""The demo's pictures, piece by piece (the whole demo runs in test_demo.py)."""

from __future__ import annotations

from pathlib import Path

from vance_provider.demo.pictures import heading


def test_contact_sheet_headings_say_how_many_outputs_they_show(tmp_path: Path) -> None:
    """Each input is drawn once on the sheet, so a tool's group may show fewer than its outputs:
    the heading says so."""
    folder = tmp_path / "upscaled"
    folder.mkdir()
    for i in range(12):
        (folder / f"p{i}.jpg").write_bytes(b"x")
    (folder / "_vance_manifest.json").write_text("{}")
    assert heading(folder, 4) == "upscaled (4 of its 12 outputs shown)"
    assert heading(folder, 12) == "upscaled"
