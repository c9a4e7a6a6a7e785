"""The Airflow versions the provider supports, checked before anything of Airflow is used.

Cheap (package metadata only): :func:`get_provider_info` calls it too, so an unsupported Airflow
is refused by name when it loads the provider, not later with an ``ImportError``.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version

from vance_provider import __version__

MIN_AIRFLOW = (3, 0, 6)


def _parts(text: str) -> tuple[int, ...]:
    """``"3.1.0rc1"`` -> ``(3, 1, 0)``: the release numbers at the front of a version."""
    match = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    return tuple(int(p) for p in match.groups() if p is not None) if match else ()


def require_supported_airflow(airflow_version: str | None = None) -> None:
    """Raise ``RuntimeError`` when the installed (or given) Airflow is older than 3.0.6."""
    if airflow_version is None:
        try:
            airflow_version = version("apache-airflow")
        except PackageNotFoundError:  # apache-airflow-core alone (Airflow >= 3.0)
            try:
                airflow_version = version("apache-airflow-core")
            except PackageNotFoundError:
                return
    if _parts(airflow_version) < MIN_AIRFLOW:
        raise RuntimeError(
            f"The VanceAI provider (vance-pipelines {__version__}) needs Apache Airflow 3.0.6 or later "
            f"(3.0 to 3.3 are supported); this is Airflow {airflow_version}. Upgrade Airflow, or use "
            "the core client (vance_provider.core) and the `vance` command without Airflow."
        )
