"""Dagster face of the VanceAI integration: a resource, asset factories, checks and a sensor.

The modules are thin: they translate Dagster configuration and context and call
``vance_provider.core``, which knows nothing of Dagster.
"""

from .assets import build_enhanced_dataset_asset, vance_dataset_asset
from .checks import MediaInfo, OutputReport, probe, verify_output, verify_outputs
from .component import VanceDatasetComponent
from .credit_usage import build_credit_usage_asset, build_credit_usage_schedule
from .materialize import VanceRunConfig
from .options import DEFAULT_POOL
from .resources import VanceAIResource, VanceStorageResource, storage_options_of
from .sensors import build_new_files_sensor
from .translator import VanceDatasetProps, VanceTranslator, dataset_props

try:  # Dagster's library registry (shown by `dagster-webserver` and in telemetry), as integrations do
    from dagster_shared.libraries import DagsterLibraryRegistry
except ImportError:  # pragma: no cover - older Dagster
    from dagster._core.libraries import DagsterLibraryRegistry  # type: ignore[no-redef]

from vance_provider import __version__

# Not a dagster-io package: its version does not follow Dagster's, so no version check.
DagsterLibraryRegistry.register("dagster-vance", __version__, is_dagster_package=False)

__all__ = [
    "DEFAULT_POOL",
    "MediaInfo",
    "OutputReport",
    "VanceAIResource",
    "VanceDatasetComponent",
    "VanceDatasetProps",
    "VanceRunConfig",
    "VanceStorageResource",
    "VanceTranslator",
    "__version__",
    "build_credit_usage_asset",
    "build_credit_usage_schedule",
    "build_enhanced_dataset_asset",
    "build_new_files_sensor",
    "dataset_props",
    "probe",
    "storage_options_of",
    "vance_dataset_asset",
    "verify_output",
    "verify_outputs",
]
