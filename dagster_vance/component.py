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
      vanceai:                      # the account, bound under resource_key (default vanceai)
        api_token: "{{ env.VANCE_API_TOKEN }}"
        base_url: "{{ env.VANCE_BASE_URL }}"
      translation:                  # the asset's attributes, as for Dagster's own components
        group_name: media
        key: "media/{{ props.name }}"

``vanceai`` takes the fields of :class:`~dagster_vance.VanceAIResource`. An ``api_token`` written
as ``"{{ env.NAME }}"`` is read from the environment when a run starts (as ``dg.EnvVar``): only the
variable's name is stored, and ``dg check defs`` passes without the secret. Leave ``vanceai`` out to
use a resource bound once for the project, e.g. in ``defs/resources.py``::

    @dg.definitions
    def resources():
        return dg.Definitions(resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"))})

Two components that bind different accounts need different ``resource_key`` values. A required
attribute (``name``, ``source``, ``destination``, ``tool``) that reads an unset environment
variable fails the load with the variables' names.
"""

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import dagster as dg
from dagster.components.resolved.errors import ResolutionException
from dagster.components.utils.translation import TranslationFn, TranslationFnResolver
from pydantic import BaseModel, Field, create_model

from .assets import build_enhanced_dataset_asset
from .options import DEFAULT_POOL, option_fields, option_names
from .resources import VanceAIResource
from .sensors import build_new_files_sensor
from .translator import VanceDatasetProps, VanceTranslator

#: ``{{ env.NAME }}`` or ``{{ env('NAME') }}`` (without a default) in a YAML attribute.
_ENV_REF = re.compile(r"\{\{\s*env(?:\.(\w+)|\(\s*['\"](\w+)['\"]\s*\))\s*\}\}")
_ENV_ONLY = re.compile(r"^\s*\{\{\s*env(?:\.(\w+)|\(\s*['\"](\w+)['\"]\s*\))\s*\}\}\s*$")
#: The attributes a dataset cannot do without.
_REQUIRED = ("name", "source", "destination", "tool")


def _env_names(value: Any) -> list[str]:
    """The environment variables a YAML value reads, nested values included."""
    if isinstance(value, str):
        return [a or b for a, b in _ENV_REF.findall(value)]
    if isinstance(value, Mapping):
        return [n for v in value.values() for n in _env_names(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _env_names(v)]
    return []


class VanceAIResourceModel(dg.Model):
    """The ``vanceai`` block: the fields of :class:`~dagster_vance.VanceAIResource`."""

    api_token: str = Field(
        description='The token or Open API key, as "{{ env.VANCE_API_TOKEN }}": read when a run starts, '
        "only the variable's name is stored."
    )
    base_url: str | None = Field(
        default=None, description="The simulator's or a proxy's URL; empty: VanceAI's."
    )
    api: str | None = Field(default=None, description="web, open, visioncraft or auto (by the token).")
    timeout: float | None = Field(default=None, description="Seconds to wait for one HTTP answer.")
    max_retries: int | None = Field(default=None, description="Retries of one retryable call.")
    max_concurrency: int | None = Field(default=None, description="Jobs one run keeps in flight, at most.")
    cache: str | None = Field(default=None, description="A result cache (fsspec URL).")
    previews: bool | None = Field(
        default=None, description="Before/after thumbnails; false for private data."
    )


_RESOURCES: dict[tuple[str, str], VanceAIResource] = {}


def resolve_vanceai(context: Any, model: Any) -> VanceAIResource | None:
    """The ``vanceai`` block as a resource; an ``api_token`` that reads one environment variable
    becomes ``dg.EnvVar`` (never rendered). Equal blocks give one resource object, so components
    sharing an account can bind it under the same key."""
    if model is None:
        return None
    raw = model.model_dump() if isinstance(model, BaseModel) else dict(model)
    token = raw.pop("api_token", None)
    only = _ENV_ONLY.match(token) if isinstance(token, str) else None
    values = {k: context.resolve_value(v) for k, v in raw.items() if v is not None}
    values = {k: v for k, v in values.items() if v not in (None, "")}
    api_token: Any = dg.EnvVar(only.group(1) or only.group(2)) if only else context.resolve_value(token)
    if not api_token:
        raise ResolutionException('vanceai.api_token is empty: write it as "{{ env.VANCE_API_TOKEN }}"')
    key = (repr(api_token), repr(sorted(values.items())))
    if key not in _RESOURCES:
        _RESOURCES[key] = VanceAIResource(api_token=api_token, **values)
    return _RESOURCES[key]


class _TranslatedVanceTranslator(VanceTranslator):
    """The component's ``translation`` over the default spec."""

    def __init__(self, translation: TranslationFn[VanceDatasetProps]) -> None:
        self.translation = translation

    def get_asset_spec(self, props: VanceDatasetProps) -> dg.AssetSpec:
        return self.translation(super().get_asset_spec(props), props)


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


class _DatasetAttributes(dg.Model):
    """What a dataset enhances, in YAML: the attributes every component needs."""

    name: str = Field(description="The asset's name (its key), e.g. photos_x2.")
    source: str = Field(description="Inputs: an fsspec prefix (s3://in/photos/), a glob, or a local folder.")
    destination: str = Field(
        description="Prefix for the outputs; the batch manifest is kept there too (resumes, never pays twice)."
    )
    tool: str = Field(description="A friendly tool (upscale, denoise, remove_bg, ...) or a vendor tool name.")
    config: dict[str, Any] | None = Field(default=None, description="The tool's options, e.g. {scale: 2}.")


# The dataset's options as attributes, made from their one declaration (dagster_vance.options).
if TYPE_CHECKING:
    _DatasetAttributesAndOptions = _DatasetAttributes
else:
    _DatasetAttributesAndOptions = create_model(
        "_DatasetAttributesAndOptions", __base__=_DatasetAttributes, **option_fields()
    )


@dg.scaffold_with(VanceDatasetScaffolder)
class VanceDatasetComponent(dg.Component, _DatasetAttributesAndOptions, dg.Resolvable):
    """A folder or bucket prefix of images or videos enhanced by one VanceAI tool."""

    partitions: Literal["per_file"] | None = Field(
        default=None, description="per_file: one dynamic partition per input file, added by a sensor."
    )
    sensor_interval_seconds: int | None = Field(
        default=60, description="How often the new-files sensor looks (per_file partitions); null: no sensor."
    )
    pool: str | None = Field(
        default=DEFAULT_POOL,
        description="Dagster concurrency pool bounding VanceAI runs across the instance.",
    )
    vanceai: Annotated[
        VanceAIResource | None,
        dg.Resolver(
            resolve_vanceai, model_field_type=VanceAIResourceModel | None, inject_before_resolve=False
        ),
    ] = Field(
        default=None,
        description='The VanceAI account, bound under resource_key: api_token (as "{{ env.VANCE_API_TOKEN }}"), '
        "base_url, api, ... Leave it out to use a resource bound elsewhere in the project.",
    )
    translation: Annotated[
        TranslationFn[VanceDatasetProps] | None,
        TranslationFnResolver[VanceDatasetProps](lambda props: {"props": props, "data": props}),
    ] = Field(
        default=None,
        description="The asset's attributes (key, group_name, owners, tags, metadata, ...) over the "
        "default ones; templates see the dataset as props (props.name, props.tool, ...).",
    )

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> "VanceDatasetComponent":
        """Fail with the names of the unset environment variables a required attribute reads,
        rather than with the validation error of an empty value."""
        if attributes is not None:
            raw = attributes.model_dump() if isinstance(attributes, BaseModel) else dict(attributes)
            missing = {
                name: [v for v in _env_names(raw.get(name)) if not os.environ.get(v)] for name in _REQUIRED
            }
            missing = {k: v for k, v in missing.items() if v}
            if missing:
                names = sorted({v for vs in missing.values() for v in vs})
                where = ", ".join(f"{k} ({', '.join(v)})" for k, v in missing.items())
                raise ResolutionException(
                    f"VanceDatasetComponent: environment variable(s) {', '.join(names)} not set; "
                    f"they are read by {where}. Set them and load again."
                )
        return super().load(attributes, context)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        # The dataset's options, and the asset's own that the component has, under the factory's names.
        options: dict[str, Any] = {name: getattr(self, name) for name in option_names()}
        options.update(partitions=self.partitions, pool=self.pool)
        storage_options = {
            k: v for k, v in (options["storage_options"] or {}).items() if v not in (None, "", {})
        }
        client_kwargs = storage_options.get("client_kwargs")
        if isinstance(client_kwargs, dict):  # an unset {{ env.X }} renders empty: leave it to the default
            storage_options["client_kwargs"] = {k: v for k, v in client_kwargs.items() if v not in (None, "")}
            if not storage_options["client_kwargs"]:
                del storage_options["client_kwargs"]
        options["storage_options"] = storage_options or None
        if self.translation is not None:
            options["translator"] = _TranslatedVanceTranslator(self.translation)
        asset = build_enhanced_dataset_asset(
            self.name, self.source, self.destination, self.tool, self.config, **options
        )
        sensors = []
        if self.partitions == "per_file" and self.sensor_interval_seconds is not None:
            sensors.append(
                build_new_files_sensor(asset, minimum_interval_seconds=self.sensor_interval_seconds)
            )
        resources = {options["resource_key"]: self.vanceai} if self.vanceai is not None else {}
        return dg.Definitions(assets=[asset], sensors=sensors, resources=resources)
