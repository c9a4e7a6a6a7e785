"""What a task start pays: the engine's import path stays free of rich, pandas, click and Pillow."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_engine_imports_without_the_heavy_libraries() -> None:
    code = (
        "import sys, json, vance_provider.core, httpx; "
        "print(json.dumps(sorted(m for m in ('rich', 'pandas', 'click', 'pygments', 'PIL', 'airflow', 'dagster') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_httpx_command_line_still_loads_on_use() -> None:
    code = "import vance_provider.core, httpx, sys; httpx.main(['--help'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage" in proc.stdout
