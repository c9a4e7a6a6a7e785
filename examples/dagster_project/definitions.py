"""Entry point for ``dagster dev -w workspace.yaml`` (or ``-f``): the `dg` project's definitions.

This folder is a `dg` project (``pyproject.toml``, ``vance_example/defs/``): the Python assets
are in ``defs/datasets.py``, a dataset declared in YAML in ``defs/photos_yaml_x2/defs.yaml``. Check
it with ``dg check defs --use-active-venv`` from this folder, or load this file with the older
``dagster`` commands. Loading makes no network call and needs no secret.
"""

import sys
from pathlib import Path

import dagster as dg

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
# Read the environment afresh (VANCE_EXAMPLE_DATA, ...) each time this file is loaded.
for _name in [m for m in sys.modules if m == "vance_example" or m.startswith("vance_example.")]:
    del sys.modules[_name]

defs = dg.load_from_defs_folder(path_within_project=HERE / "vance_example")
