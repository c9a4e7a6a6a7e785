"""The documentation builds without warnings, and its Python examples run against the simulator.

A block whose first line is ``# not run: <why>`` is only compiled (it needs a real Airflow DAG
folder or similar); every other ``python`` block is executed in a fresh namespace, in a folder
that holds the demo photos, with ``VANCE_API_TOKEN`` and ``VANCE_BASE_URL`` set.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OPEN_KEY
from vance_provider.core.tools import FRIENDLY, OPEN_TOOLS, WEB_MODULES
from vance_provider.demo_data import make_dataset

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in [*DOCS, ROOT / "README.md"]:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            found.append((page.name, i, code))
    return found


BLOCKS = _blocks()


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_every_tool_is_documented() -> None:
    text = (ROOT / "docs" / "tools.md").read_text()
    for name in [*FRIENDLY, *OPEN_TOOLS, *WEB_MODULES]:
        assert f"`{name}`" in text, name


@pytest.mark.parametrize("page,index,code", BLOCKS, ids=[f"{p}#{i}" for p, i, _ in BLOCKS])
def test_python_examples(
    page: str, index: int, code: str, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if code.startswith("# not run") or page == "README.md":
        compile(code, f"{page}#{index}", "exec")  # at least valid Python
        return
    make_dataset(tmp_path / "photos", video=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VANCE_API_TOKEN", OPEN_KEY)
    monkeypatch.setenv("VANCE_BASE_URL", sim.base_url)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(code, f"{page}#{index}", "exec"), {"__name__": "__docs__"})
