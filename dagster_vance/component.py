"""``VanceDatasetComponent``: declare an enhanced dataset in YAML (Dagster components).

``defs/photos_x2/defs.yaml``::

    type: dagster_vance.VanceDatasetComponent
    attributes:
      name: photos_x2
      source: "s3://in/photos/"
      destination: "s3://out/photos_x2/"
      tool: upscale
      config: {scale: 2}
      credit_budget: 200
      partitions: per_file          # one partition per file, and a sensor that adds them
      storage_options:
        client_kwargs: {endpoint_url: "{{ env.AWS_ENDPOINT_URL }}"}

The component builds the asset (and its sensor) with :func:`build_enhanced_dataset_asset`; bind the
``vanceai`` resource once for the project, e.g. in ``defs/resources.py``::

    @dg.definitions
    def resources():
        return dg.Definitions(resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"))})
"""

from typing import Any, Literal

import dagster as dg
from pydantic import Field

from vance_provider.defaults import DEFAULT_MAX_CONCURRENCY

from .assets import DEFAULT_POOL, DatasetOptions, build_enhanced_dataset_asset
from .sensors import build_new_files_sensor

#: What ``dg scaffold defs dagster_vance.VanceDatasetComponent <path>`` writes into ``defs.yaml``.
SCAFFOLD_ATTRIBUTES: dict[str, Any] = {
    "name": "photos_x2",
    "source": "{{ env.VANCE_SOURCE }}",
    "destination": "{{ env.VANCE_DESTINATION }}",
    "tool": "upscale",
    "config": {"scale": 2},
    "credit_budget": 100,
    "on_failure": "fail",
}


class VanceDatasetScaffolder(dg.Scaffolder):
    """Writes a ``defs.yaml`` with a working dataset: fill in the two environment variables."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        attributes = dict(SCAFFOLD_ATTRIBUTES)
        attributes["name"] = request.target_path.name.replace("-", "_") or attributes["name"]
        dg.scaffold_component(request, attributes)


@dg.scaffold_with(VanceDatasetScaffolder)
class VanceDatasetComponent(dg.Component, dg.Model, dg.Resolvable):
    """A folder or bucket prefix of images or videos enhanced by one VanceAI tool."""

    name: str = Field(description="The asset's name (its key), e.g. photos_x2.")
    source: str = Field(description="Inputs: an fsspec prefix (s3://in/photos/), a glob, or a local folder.")
    destination: str = Field(
        description="Prefix for the outputs; the batch manifest is kept there too (resumes, never pays twice)."
    )
    tool: str = Field(description="A friendly tool (upscale, denoise, remove_bg, ...) or a vendor tool name.")
    config: dict[str, Any] | None = Field(default=None, description="The tool's options, e.g. {scale: 2}.")
    output_format: str | None = Field(default=None, description="jpg, png or webp (Open API).")
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY, description="Jobs in flight at once in one run."
    )
    credit_budget: float | None = Field(
        default=None, description="Stop submitting once this many credits would be spent in one run."
    )
    storage_options: dict[str, Any] | None = Field(
        default=None,
        description="fsspec options without secrets (endpoint_url, region); credentials come from the "
        "storage resource (storage_resource_key) or the environment. Keys here are refused.",
    )
    storage_resource_key: str | None = Field(
        default=None,
        description="The key of a VanceStorageResource (or dagster-aws S3Resource) holding the store's "
        "credentials, bound once for the project (dg.EnvVar values).",
    )
    partitions: Literal["per_file"] | None = Field(
        default=None, description="per_file: one dynamic partition per input file, added by a sensor."
    )
    sensor_interval_seconds: int | None = Field(
        default=60, description="How often the new-files sensor looks (per_file partitions); null: no sensor."
    )
    group_name: str | None = Field(default="vanceai", description="The asset group.")
    pool: str | None = Field(
        default=DEFAULT_POOL,
        description="Dagster concurrency pool bounding VanceAI runs across the instance.",
    )
    on_failure: Literal["fail", "continue", "fail_fast"] = Field(
        default="fail",
        description="fail: fail the run if an item failed; fail_fast: stop submitting at the first failure; "
        "continue: succeed and report failures.",
    )
    on_insufficient_credits: Literal["fail", "partial"] = Field(
        default="fail", description="fail before spending anything, or run what the balance covers."
    )
    poll_interval: float = Field(default=2.0, description="Seconds between status polls (backs off).")
    description: str | None = Field(default=None, description="The asset's description.")
    resource_key: str = Field(default="vanceai", description="The key of the VanceAIResource to use.")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        storage_options = {k: v for k, v in (self.storage_options or {}).items() if v not in (None, "", {})}
        client_kwargs = storage_options.get("client_kwargs")
        if isinstance(client_kwargs, dict):  # an unset {{ env.X }} renders empty: leave it to the default
            storage_options["client_kwargs"] = {k: v for k, v in client_kwargs.items() if v not in (None, "")}
            if not storage_options["client_kwargs"]:
                del storage_options["client_kwargs"]
        # The component's fields that are options of the factory, under the same names.
        options: dict[str, Any] = {
            k: getattr(self, k) for k in DatasetOptions.__annotations__ if k in type(self).model_fields
        }
        options["storage_options"] = storage_options or None
        asset = build_enhanced_dataset_asset(
            self.name, self.source, self.destination, self.tool, self.config, **options
        )
        sensors = []
        if self.partitions == "per_file" and self.sensor_interval_seconds is not None:
            sensors.append(
                build_new_files_sensor(asset, minimum_interval_seconds=self.sensor_interval_seconds)
            )
        return dg.Definitions(assets=[asset], sensors=sensors)
