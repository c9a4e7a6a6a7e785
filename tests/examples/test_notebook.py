"""The example notebook runs top to bottom against the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import OPEN_KEY, WEB_TOKEN

pytestmark = pytest.mark.slow  # starts processes of its own

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebooks" / "enhance_with_vanceai.ipynb"


@pytest.mark.parametrize("token", [OPEN_KEY, WEB_TOKEN], ids=["open", "web"])
def test_notebook_runs(token: str, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VANCE_API_TOKEN", token)
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    monkeypatch.setenv("VANCE_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(str(o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "error" not in {o.get("output_type") for c in nb.cells for o in c.get("outputs", [])}
    assert "'done': 12" in outputs  # the batch cell's summary
    assert token not in outputs  # the token never shows in a cell's output
    assert (
        len(list((tmp_path / "denoised").glob("*.jpg"))) + len(list((tmp_path / "denoised").glob("*.png")))
        == 12
    )
    # The usage cell shows typed columns; the charges match the simulator's ledger.
    assert "datetime64" in outputs and "float64" in outputs
    assert len(sim.state.charges()) == 13  # 1 single file + 12 in the batch
