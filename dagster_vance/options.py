"""The options of an enhanced dataset, declared once.

:class:`DatasetOptions` holds each option's name, type, default and description. Everything that
takes these options reads them from here:

- the dataset's props (:class:`~dagster_vance.VanceDatasetProps`, what the translator sees) are a
  subclass;
- the YAML attributes of :class:`~dagster_vance.VanceDatasetComponent` are made from its fields
  (:func:`option_fields`);
- the keyword arguments of :func:`~dagster_vance.build_enhanced_dataset_asset` and
  :func:`~dagster_vance.vance_dataset_asset` are its fields and :data:`ASSET_ONLY_OPTIONS`
  (``dagster_vance.assets.DatasetKwargs`` repeats their names and types for type checkers only,
  as a ``**kwargs`` is typed by a ``TypedDict``; a test keeps the two in step).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from pydantic import Field

from vance_provider.defaults import DEFAULT_MAX_CONCURRENCY

FailurePolicy = Literal["fail", "continue", "fail_fast"]
FAILURE_POLICIES: tuple[str, ...] = typing.get_args(FailurePolicy)
#: The Dagster concurrency pool the dataset assets run in unless told otherwise.
DEFAULT_POOL = "vanceai"


def option(default: Any, description: str, **kwargs: Any) -> Any:
    """A dataset option: its default and the description shown in the docs and the YAML schema."""
    return field(default=default, metadata={"description": description}, **kwargs)


@dataclass(frozen=True, kw_only=True)
class DatasetOptions:
    """The options of an enhanced dataset beyond its name, source, destination, tool and config.
    None of them holds a secret: the props carry them in the asset spec's metadata."""

    output_format: str | None = option(None, "jpg, png or webp (images).")
    jconfig: Mapping[str, Any] | str | None = option(
        None, "The web API's own jconfig (a module's JSON), instead of tool and config."
    )
    max_concurrency: int = option(
        DEFAULT_MAX_CONCURRENCY, "Jobs in flight at once in one run (also bounded by the resource's)."
    )
    credit_budget: float | None = option(
        None,
        "Credits one run may spend; over it the run fails before paying anything "
        "(on_insufficient_credits: fail) or stops submitting (partial).",
    )
    account_budget: str | None = option(
        None,
        "A named budget of the account (set with `vance budget set`), shared by every run and "
        "worker: each job's credits are reserved in it before the job is created.",
    )
    group_name: str | None = option("vanceai", "The asset group.")
    description: str | None = option(None, "The asset's description.")
    storage_options: Mapping[str, Any] | None = option(
        None,
        "fsspec options of the source and destination without secrets (endpoint_url, region); they "
        "are part of the asset's definition. Credentials are refused here: they come from the "
        "storage resource (storage_resource_key) or the environment.",
        compare=False,
    )
    resource_key: str = option("vanceai", "The key of the VanceAIResource to use.")
    storage_resource_key: str | None = option(
        None,
        "The key of a VanceStorageResource (or dagster-aws S3Resource) holding the store's "
        "credentials, read at run time (dg.EnvVar values).",
    )
    on_failure: FailurePolicy = option(  # noqa: RUF009 - option() is dataclasses.field()
        "fail",
        "fail: the run fails after the batch when an item failed (re-execute to retry only those); "
        "fail_fast: stop submitting at the first failure; continue: materialize anyway, the failures "
        "listed in metadata and checks.",
    )
    on_insufficient_credits: Literal["fail", "partial"] = option(
        "fail", "fail before spending anything, or run what the balance covers."
    )
    poll_interval: float = option(2.0, "Seconds between status polls at first (the engine adapts it).")
    timeout: float | None = option(None, "Seconds one run may take; none: no limit.")
    preview_rows: int = option(5, "Outputs shown in the materialization's vance/preview.")
    allow_empty: bool = option(True, "An empty source materializes an empty dataset (false: the run fails).")
    preview: bool = option(
        True,
        "Small before/after thumbnails of the first preview_rows outputs in the materialization's "
        "vance/preview, and a contact sheet _vance_preview/_vance_contact_sheet.jpg beside the "
        "outputs (vance/preview_image). False for private data: the preview is then names and sizes "
        "only, and no picture is written (the resource's previews turns them off for every dataset).",
    )


#: The options that shape only the asset (not part of the props carried in its metadata).
ASSET_ONLY_OPTIONS = ("partitions", "pool", "translator", "retry_policy")


def options_doc(indent: str = "        ") -> str:
    """Each option with its description and default, as lines of a docstring's argument list."""
    lines = []
    for f in fields(DatasetOptions):
        lines.append(f"{indent}{f.name}: {f.metadata['description']} Default: {f.default!r}.")
    return "\n".join(lines)


def option_names() -> tuple[str, ...]:
    """The names of the options carried in a dataset's props."""
    return tuple(f.name for f in fields(DatasetOptions))


def option_fields() -> dict[str, Any]:
    """The options as pydantic fields ``{name: (type, Field(default, description))}``: the
    component's YAML attributes."""
    hints = typing.get_type_hints(DatasetOptions)
    result: dict[str, Any] = {}
    for f in fields(DatasetOptions):
        default = f.default if f.default is not MISSING else None
        result[f.name] = (hints[f.name], Field(default=default, description=f.metadata["description"]))
    return result
