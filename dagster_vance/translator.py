"""What a dataset is (``VanceDatasetProps``) and how it looks in Dagster (``VanceTranslator``).

Subclass the translator to change keys, groups, kinds, owners or the checks of every dataset::

    class MyTranslator(VanceTranslator):
        def get_asset_spec(self, props):
            return super().get_asset_spec(props).replace_attributes(key=["media", props.name], owners=["team:ml"])
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Literal

import dagster as dg
from fsspec.core import url_to_fs

from vance_provider.core.state.manifest import MANIFEST_NAME
from vance_provider.core.state.storage import full_url, join, safe_name
from vance_provider.core.tools import media_of

from .options import DatasetOptions, option_names

CHECK_OUTPUTS = "outputs_valid"
CHECK_ACCOUNTED = "inputs_accounted_for"
CHECK_BUDGET = "credits_within_budget"
PARTITION_MANIFESTS = "_vance_partitions"
SHARD_MANIFESTS = "_vance_shards/manifests"  # core/batch/shards.py: one manifest per shard


_QUERY = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]+)\?[^\s'\"]*", re.IGNORECASE)


def strip_query(text: str) -> str:
    """Drop query strings from every URL in ``text`` (signed URLs carry credentials there)."""
    return _QUERY.sub(r"\1", text)


def location_metadata(url: str) -> dg.MetadataValue:
    """A path for local files, a URL for object stores; never with a query string."""
    clean = strip_query(url)
    if "://" not in clean or clean.startswith("file://"):
        return dg.MetadataValue.path(clean.removeprefix("file://"))
    return dg.MetadataValue.url(clean)


_OPTION_NAMES = option_names()

#: The asset spec's metadata key that carries a dataset's :class:`VanceDatasetProps` (as JSON).
PROPS_METADATA_KEY = "vance/dataset"

#: Option names that hold credentials: refused in definitions (bind a storage resource instead).
SECRET_OPTION_NAMES = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "access_key",
        "secret_key",
        "session_token",
        "account_key",
        "sas_token",
        "client_secret",
        "credentials",
        "connection_string",
    }
)


def secret_option_names(options: Mapping[str, Any] | None, prefix: str = "") -> list[str]:
    """The (dotted) names of credential-bearing entries in fsspec options, nested ones included."""
    found: list[str] = []
    for name, value in (options or {}).items():
        dotted = f"{prefix}{name}"
        if str(name).lower() in SECRET_OPTION_NAMES and value not in (None, ""):
            found.append(dotted)
        elif isinstance(value, Mapping):
            found += secret_option_names(value, dotted + ".")
    return found


@dataclass(frozen=True)
class VanceDatasetProps(DatasetOptions):
    """Everything one enhanced dataset is built from: what it enhances, how, and its options
    (:class:`~dagster_vance.options.DatasetOptions`). It holds no secret: credentials come from a
    storage resource at run time (``storage_resource_key``), so the props can be carried in the
    asset spec's metadata (``vance/dataset``) and read back by sensors, reports and asset bodies."""

    name: str
    source: str | tuple[str, ...]
    destination: str
    tool: str
    config: Mapping[str, Any] | None = None
    partitioned: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON of every field: the dataset first, then its options."""
        data = asdict(self)
        data["source"] = self.source if isinstance(self.source, str) else list(self.source)
        first = [f.name for f in fields(self) if f.name not in _OPTION_NAMES]
        return {name: data[name] for name in [*first, *_OPTION_NAMES]}

    def user_json(self) -> dict[str, Any]:
        """What the user set, as plain JSON: the dataset's name, source, destination and tool, and
        every option that differs from its default (the asset spec's ``vance/dataset``; it reads
        back with :meth:`from_json`)."""
        data = self.to_json()
        defaults = {f.name: _default_of(f) for f in fields(self)}
        always = ("name", "source", "destination", "tool")
        return {name: value for name, value in data.items() if name in always or value != defaults[name]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VanceDatasetProps:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("source"), list):
            values["source"] = tuple(values["source"])
        return cls(**values)

    def storage_options_with(self, credentials: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The dataset's own (non-secret) options with a storage resource's over them."""
        return merge_options(self.storage_options, credentials)

    @property
    def media(self) -> Literal["image", "video"]:
        return media_of(self.tool)

    @property
    def manifest_url(self) -> str:
        """The manifest of an unpartitioned dataset."""
        return join(self.destination, MANIFEST_NAME)

    def partition_manifest_url(self, partition_key: str) -> str:
        return join(join(self.destination, PARTITION_MANIFESTS), safe_name(partition_key) + ".json")

    def existing_manifests(self, storage_options: Mapping[str, Any] | None = None) -> list[str]:
        """Manifest URLs that exist now (one, or one per materialized partition); the store is
        reached with ``storage_options`` (default: the dataset's own)."""
        options = storage_options if storage_options is not None else self.storage_options
        fs, path = url_to_fs(self.destination, **dict(options or {}))
        fs.invalidate_cache()
        base = path.rstrip("/")
        found = []
        if fs.exists(f"{base}/{MANIFEST_NAME}"):
            found.append(full_url(fs, f"{base}/{MANIFEST_NAME}"))
        for folder in (PARTITION_MANIFESTS, SHARD_MANIFESTS):  # per-file partitions, shards
            if self.partitioned and fs.isdir(f"{base}/{folder}"):
                found += [
                    full_url(fs, p)
                    for p in sorted(fs.find(f"{base}/{folder}"))
                    if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".")
                ]
        return found


def _default_of(f: Any) -> Any:
    return f.default if f.default is not MISSING else None


def merge_options(base: Mapping[str, Any] | None, over: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """fsspec options ``over`` merged over ``base`` (``client_kwargs`` and ``config_kwargs`` merged
    key by key); None when both are empty."""
    if not base and not over:
        return None
    merged: dict[str, Any] = dict(base or {})
    for name, value in (over or {}).items():
        if name in ("client_kwargs", "config_kwargs") and isinstance(value, Mapping):
            merged[name] = {**dict(merged.get(name) or {}), **dict(value)}
        else:
            merged[name] = value
    return merged


class VanceTranslator:
    """The one override point for how datasets appear in Dagster."""

    def get_asset_spec(self, props: VanceDatasetProps) -> dg.AssetSpec:
        source = props.source if isinstance(props.source, str) else ", ".join(props.source[:3])
        description = props.description or (
            f"{props.media.capitalize()}s from `{strip_query(source)}` enhanced with VanceAI `{props.tool}` "
            f"into `{strip_query(props.destination)}`."
        )
        if props.partitioned and not props.description:
            description += (
                f" One partition per input file, added by the sensor `{props.name}_new_files`: until "
                "that sensor has run, the asset has no partition (the catalog shows 0 partitions, "
                "which means nothing was listed yet, not that all is done)."
            )
        return dg.AssetSpec(
            key=[props.name],
            group_name=props.group_name,
            description=description,
            kinds={"vanceai", props.media},
            metadata={
                "vance/tool": props.tool,
                "vance/media": props.media,
                "vance/source": strip_query(source),
                "vance/destination": location_metadata(props.destination),
            },
        )

    def get_check_specs(
        self, props: VanceDatasetProps, asset_key: dg.AssetKey
    ) -> Sequence[dg.AssetCheckSpec]:
        specs = [
            dg.AssetCheckSpec(
                CHECK_OUTPUTS,
                asset=asset_key,
                description="Every output exists, decodes (Pillow for images, PyAV for video) and "
                "has the expected format and size (input size x the tool's scale).",
            ),
            dg.AssetCheckSpec(
                CHECK_ACCOUNTED,
                asset=asset_key,
                description="No input is left unprocessed without a reason: every manifest item is "
                "done, or failed/skipped with an error.",
            ),
        ]
        if props.credit_budget is not None:
            specs.append(
                dg.AssetCheckSpec(
                    CHECK_BUDGET,
                    asset=asset_key,
                    description=f"The run spent at most {props.credit_budget:g} credits.",
                )
            )
        return specs


def dataset_props(asset: dg.AssetsDefinition) -> VanceDatasetProps:
    """What an enhanced dataset asset was built from: read from its spec's ``vance/dataset``
    metadata (so it survives copies, ``with_attributes`` and code-location reloads)."""
    value = dataset_spec(asset).metadata[PROPS_METADATA_KEY]
    data = value.value if isinstance(value, dg.MetadataValue) else value
    return VanceDatasetProps.from_json(data)


def dataset_spec(asset: dg.AssetsDefinition) -> dg.AssetSpec:
    """The spec of the enhanced dataset in ``asset`` (also when a run selected only its checks)."""
    for spec in asset.specs:
        if PROPS_METADATA_KEY in (spec.metadata or {}):
            return spec
    raise dg.DagsterInvariantViolationError(
        f"{asset.key.to_user_string()} is not an enhanced dataset (built by vance_dataset_asset or "
        "build_enhanced_dataset_asset)"
    )
