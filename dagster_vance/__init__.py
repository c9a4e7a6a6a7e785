"""Dagster face of the VanceAI integration: a resource, asset factories, checks and a sensor.

The modules are thin: they translate Dagster configuration and context and call
``vance_provider.core``, which knows nothing of Dagster.
"""

from .assets import (
    DEFAULT_POOL,
    VanceRunConfig,
    build_credit_usage_asset,
    build_credit_usage_schedule,
    build_enhanced_dataset_asset,
    dataset_props,
    vance_dataset_asset,
)
from .checks import MediaInfo, OutputReport, probe, verify_output, verify_outputs
from .component import VanceDatasetComponent
from .resources import VanceAIResource, VanceStorageResource, storage_options_of
from .sensors import build_new_files_sensor
from .translator import VanceDatasetProps, VanceTranslator

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
