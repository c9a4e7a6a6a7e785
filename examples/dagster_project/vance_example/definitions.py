"""The project's definitions: everything under ``defs/`` (Python modules and ``defs.yaml`` components)."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
