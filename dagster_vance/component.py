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

from .assets import DEFAULT_POOL, build_enhanced_dataset_asset
from .sensors import build_new_files_sensor


class VanceDatasetComponent(dg.Component, dg.Model, dg.Resolvable):
    """A folder or bucket prefix of images or videos enhanced by one VanceAI tool."""

    name: str
    source: str
    destination: str
    tool: str
    config: dict[str, Any] | None = None
    output_format: str | None = None
    max_concurrency: int = 8
    credit_budget: float | None = None
    storage_options: dict[str, Any] | None = None
    partitions: Literal["per_file"] | None = None
    sensor_interval_seconds: int | None = 60  # with per-file partitions; None: no sensor
    group_name: str | None = "vanceai"
    pool: str | None = DEFAULT_POOL
    on_failure: Literal["fail", "continue", "fail_fast"] = "fail"
    on_insufficient_credits: Literal["fail", "partial"] = "fail"
    poll_interval: float = 2.0
    description: str | None = None
    resource_key: str = "vanceai"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        storage_options = {k: v for k, v in (self.storage_options or {}).items() if v not in (None, "", {})}
        client_kwargs = storage_options.get("client_kwargs")
        if isinstance(client_kwargs, dict):  # an unset {{ env.X }} renders empty: leave it to the default
            storage_options["client_kwargs"] = {k: v for k, v in client_kwargs.items() if v not in (None, "")}
            if not storage_options["client_kwargs"]:
                del storage_options["client_kwargs"]
        asset = build_enhanced_dataset_asset(
            self.name,
            self.source,
            self.destination,
            self.tool,
            self.config,
            output_format=self.output_format,
            max_concurrency=self.max_concurrency,
            credit_budget=self.credit_budget,
            storage_options=storage_options or None,
            partitions=self.partitions,
            group_name=self.group_name,
            pool=self.pool,
            on_failure=self.on_failure,
            on_insufficient_credits=self.on_insufficient_credits,
            poll_interval=self.poll_interval,
            description=self.description,
            resource_key=self.resource_key,
        )
        sensors = []
        if self.partitions == "per_file" and self.sensor_interval_seconds is not None:
            sensors.append(
                build_new_files_sensor(asset, minimum_interval_seconds=self.sensor_interval_seconds)
            )
        return dg.Definitions(assets=[asset], sensors=sensors)
