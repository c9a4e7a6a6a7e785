"""What a task start pays: the engine's import path adds neither rich, pandas, click nor Pillow.

httpx loads its own command-line tool (click, rich, pygments) when those are installed; Airflow's
task SDK imports httpx before any task code runs, so a task start pays that whatever the engine
does. The engine itself must add nothing heavy on top of httpx.
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_engine_imports_without_the_heavy_libraries() -> None:
    code = (
        "import sys, json, httpx; before = set(sys.modules); import vance_provider.core; "
        "new = set(sys.modules) - before; "
        "print(json.dumps(sorted(m for m in ('rich', 'pandas', 'click', 'pygments', 'PIL', 'airflow', 'dagster') "
        "if m in new)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_httpx_is_not_patched() -> None:
    code = "import vance_provider.core, httpx, sys; httpx.main(['--help'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage" in proc.stdout
