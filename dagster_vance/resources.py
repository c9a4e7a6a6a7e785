"""``VanceAIResource``: the VanceAI account as a Dagster resource.

The resource holds described configuration only; :meth:`VanceAIResource.get_client` builds the
core's client, which knows nothing of Dagster. The token is a secret: pass it with
``dg.EnvVar("VANCE_API_TOKEN")`` so that only the variable's *name* is stored in the run's
configuration, and it never shows in ``repr``, logs or metadata. The classes' docstrings are
single paragraphs because Dagster shows them, as Markdown, as the resources' descriptions; the
examples are here.

Bound the jobs in flight across runs with a Dagster concurrency pool: the dataset assets run in
the pool ``vanceai`` (``dagster instance concurrency set vanceai 2``).

Example::

    import dagster as dg
    from dagster_vance import VanceAIResource, build_enhanced_dataset_asset

    photos = build_enhanced_dataset_asset("photos_x4", source="s3://in/photos/", destination="s3://out/x4/",
                                          tool="upscale", config={"scale": 4})
    defs = dg.Definitions(assets=[photos],
                          resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"))})

``VanceStorageResource``: bind it under a key and name that key in the asset
(``storage_resource_key="vance_storage"``), so keys come from ``dg.EnvVar`` at run time and never
sit in the definitions. dagster-aws's ``S3Resource`` is accepted in its place (the same field
names). Without a storage resource, s3fs and the other fsspec stores read the usual environment
(``AWS_*``, profiles, roles)::

    defs = dg.Definitions(
        assets=[build_enhanced_dataset_asset("photos_x2", source="s3://in/", destination="s3://out/",
                                             tool="upscale", storage_resource_key="vance_storage")],
        resources={
            "vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN")),
            "vance_storage": VanceStorageResource(
                endpoint_url="http://minio:9000",
                aws_access_key_id=dg.EnvVar("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY"),
            ),
        },
    )
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field, PrivateAttr, field_validator

from vance_provider.core import (
    AsyncVanceClient,
    BatchResult,
    BatchSpec,
    Progress,
    RetryPolicy,
    VanceClient,
    detect_api,
)
from vance_provider.core.api.models import API_CHOICES, Balance
from vance_provider.core.reports.credits import ManifestRef
from vance_provider.defaults import DEFAULT_API, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT

from .materialize import VanceRunConfig, materialize
from .translator import dataset_props, dataset_spec


def _caller() -> str:
    return f"dagster/{dg.__version__}"


class VanceAIResource(dg.ConfigurableResource):
    """A VanceAI account (web API v1, Open API v1 or VisionCraft) for the enhanced datasets, the
    credit report, checks and sensors. Pass the token as an environment variable (dg.EnvVar), so
    that only its name is stored. The dataset assets run in the Dagster concurrency pool vanceai,
    which bounds how many talk to the account at once across runs."""

    api_token: str = Field(
        repr=False,
        description="VanceAI API token (web API) or Open API key (sk_live_...); pass dg.EnvVar('VANCE_API_TOKEN').",
    )
    base_url: str | None = Field(
        default=None,
        description="Override the service URL: the simulator (http://127.0.0.1:8765), a proxy or a regional host.",
    )
    api: str = Field(
        default=DEFAULT_API,
        description="'web' (web API v1), 'open' (Open API v1), or 'auto': sk_live_ keys use the Open API.",
    )
    timeout: float = Field(default=DEFAULT_TIMEOUT, description="Seconds to wait for one HTTP answer.")
    max_retries: int = Field(
        default=DEFAULT_MAX_RETRIES,
        description="Retries of one retryable call (429, 5xx, dropped connections) with jittered backoff.",
    )
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        description="Upper bound of jobs one run keeps in flight (each asset may ask for fewer).",
    )
    account_store: str | None = Field(
        default=None,
        description="Where every worker of the account shares its request rate, job cap and credit "
        "budgets: local (this machine), redis://host:6379/0 or postgresql://user:pass@host/db "
        "(every machine), none; unset: "
        "$VANCE_ACCOUNT_STORE, else local. See docs/account.md.",
    )
    account_max_jobs: int | None = Field(
        default=None,
        description="The account's cap on jobs in flight, shared by every worker through the "
        "account store (unset: $VANCE_ACCOUNT_MAX_JOBS, else learned per process from refusals).",
    )
    cache: str | None = Field(
        default=None,
        description="A result cache (fsspec URL, e.g. s3://bucket/vance-cache/) shared by every dataset "
        "this resource runs: an input already enhanced with the same tool and config is copied for 0 "
        "credits. It is reached with the dataset's storage options (its storage resource).",
    )

    previews: bool = Field(
        default=True,
        description="Before/after thumbnails in the materializations of the datasets this resource "
        "runs, and a contact sheet beside their outputs. False for private data: no picture is "
        "drawn or written (each dataset can also turn its own off with preview=False).",
    )

    _client: VanceClient | None = PrivateAttr(default=None)

    @field_validator("api")
    @classmethod
    def _check_api(cls, value: str) -> str:
        if value not in API_CHOICES:
            raise ValueError(f"api must be one of {', '.join(map(repr, API_CHOICES))}, got {value!r}")
        return value

    @field_validator("max_concurrency", "max_retries")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    # --- lifecycle -------------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "base_url": self.base_url,
            "timeout": self.timeout,
            "retry": RetryPolicy(max_attempts=self.max_retries + 1),
            "max_connections": max(8, 2 * self.max_concurrency),
            "caller": _caller(),
            "account_store": self.account_store,
            "account_max_jobs": self.account_max_jobs,
        }

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Building the client does no network call; the first request is made by the asset.
        self._client = VanceClient(self.api_token, **self._client_kwargs())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @contextmanager
    def get_client(self, storage_options: Mapping[str, Any] | None = None) -> Iterator[VanceClient]:
        """The core's blocking client. Inside a run it is the run's client; elsewhere (a sensor,
        a notebook), or with ``storage_options`` for the files it uploads and downloads, a new
        client that is closed on exit."""
        if self._client is not None and not storage_options:
            yield self._client
            return
        client = VanceClient(
            self.api_token,
            **self._client_kwargs(),
            storage_options=dict(storage_options) if storage_options else None,
        )
        try:
            yield client
        finally:
            client.close()

    @asynccontextmanager
    async def get_async_client(self) -> AsyncIterator[AsyncVanceClient]:
        """The core's async client, for async assets; closed on exit."""
        async with AsyncVanceClient(self.api_token, **self._client_kwargs()) as client:
            yield client

    @property
    def api_name(self) -> str:
        """'web' or 'open': the API this resource talks to (no network call)."""
        return detect_api(self.api_token, self.api)

    # --- verbs -------------------------------------------------------------------------------------
    def balance(self) -> Balance:
        with self.get_client() as client:
            return client.balance()

    def run_batch(
        self,
        spec: BatchSpec,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        manifest_url: str | None = None,
    ) -> BatchResult:
        """Run or resume a batch through the core engine, at most ``max_concurrency`` jobs in flight.

        ``manifest_url`` keeps the manifest somewhere other than ``<destination>/_vance_manifest.json``
        (one manifest per partition, so that partitions running side by side never overwrite each
        other's manifest).
        """
        spec = replace(
            spec,
            max_concurrency=max(1, min(spec.max_concurrency, self.max_concurrency or 1)),
            manifest=manifest_url or spec.manifest,
            cache=spec.cache or self.cache or None,
        )
        with self.get_client() as client:  # the batch carries its own storage options
            return client.run_batch(spec, on_progress)

    def materialize_dataset(
        self,
        context: dg.AssetExecutionContext,
        *,
        storage: Any = None,
        config: Any = None,
    ) -> Iterator[Any]:
        """The body of an enhanced dataset asset: run (or resume) its batch, then yield its
        ``MaterializeResult`` and check results. The dataset comes from the asset's spec (an asset
        built with :func:`dagster_vance.vance_dataset_asset` or the factory), so your own body can
        do work around it::

            @vance_dataset_asset(name="photos_x2", source="s3://in/", destination="s3://out/",
                                 tool="upscale", config={"scale": 2})
            def photos_x2(context: dg.AssetExecutionContext, vanceai: VanceAIResource,
                          storage: VanceStorageResource):
                context.log.info("before")
                yield from vanceai.materialize_dataset(context, storage=storage)

        Args:
            storage: a :class:`VanceStorageResource`, dagster-aws's ``S3Resource`` or a mapping of
                fsspec options holding the store's credentials (default: the resource bound under
                the dataset's ``storage_resource_key``, if any).
            config: a :class:`dagster_vance.VanceRunConfig` (``force``, ``credit_budget``).
        """
        props = dataset_props(context.assets_def)
        if storage is None and props.storage_resource_key:
            storage = getattr(context.resources, props.storage_resource_key, None)
            if storage is None:
                raise dg.DagsterInvariantViolationError(
                    f"{props.name} takes its storage credentials from the resource "
                    f"{props.storage_resource_key!r}: name it as a parameter of the asset's body and "
                    "pass it as storage=..."
                )
        yield from materialize(
            context,
            config if config is not None else VanceRunConfig(),
            self,
            props,
            dataset_spec(context.assets_def).key,
            credentials=storage_options_of(storage),
        )

    def usage_report(self, manifests: Iterable[ManifestRef] = ()) -> pd.DataFrame:
        """The account's usage as a typed DataFrame (see ``vance_provider.core.reports.credits``).

        Web API: the service's full history. Open API (which keeps no history): the charges of
        the finished jobs recorded in ``manifests``; each is a URL or ``(url, storage_options)``.
        """
        with self.get_client() as client:
            return client.usage_report(manifests)


class VanceStorageResource(dg.ConfigurableResource):
    """Where a dataset's inputs and outputs live: the credentials and options of an object store
    (S3 or S3-compatible such as MinIO), read from environment variables at run time. Name its key
    in a dataset's storage_resource_key; dagster-aws's S3Resource is accepted in its place."""

    endpoint_url: str | None = Field(
        default=None, description="An S3-compatible endpoint (MinIO, Ceph, a local moto server)."
    )
    region_name: str | None = Field(default=None, description="The AWS region, e.g. eu-west-1.")
    profile_name: str | None = Field(default=None, description="A profile of the AWS config files.")
    aws_access_key_id: str | None = Field(
        default=None, repr=False, description="Access key id; pass dg.EnvVar('AWS_ACCESS_KEY_ID')."
    )
    aws_secret_access_key: str | None = Field(
        default=None, repr=False, description="Secret access key; pass dg.EnvVar('AWS_SECRET_ACCESS_KEY')."
    )
    aws_session_token: str | None = Field(
        default=None, repr=False, description="Session token of temporary credentials (EnvVar)."
    )
    use_unsigned_session: bool = Field(default=False, description="Anonymous access (public buckets).")
    verify: bool | None = Field(default=None, description="Verify TLS certificates (None: the default).")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="More fsspec options for other stores or settings (merged last), e.g. "
        "{'config_kwargs': {'max_pool_connections': 50}}.",
    )

    def get_storage_options(self) -> dict[str, Any]:
        """The fsspec options (secrets included: never log or store them)."""
        return s3_options_from(self) | dict(self.storage_options or {})


def s3_options_from(resource: Any) -> dict[str, Any]:
    """s3fs options from a resource with the S3 configuration fields (ours or dagster-aws's)."""
    options: dict[str, Any] = {}
    if getattr(resource, "use_unsigned_session", False):
        options["anon"] = True
    if getattr(resource, "profile_name", None):
        options["profile"] = resource.profile_name
    if getattr(resource, "aws_access_key_id", None):
        options["key"] = resource.aws_access_key_id
    if getattr(resource, "aws_secret_access_key", None):
        options["secret"] = resource.aws_secret_access_key
    if getattr(resource, "aws_session_token", None):
        options["token"] = resource.aws_session_token
    if getattr(resource, "use_ssl", True) is False:
        options["use_ssl"] = False
    client_kwargs = {
        k: getattr(resource, k) for k in ("endpoint_url", "region_name") if getattr(resource, k, None)
    }
    if getattr(resource, "verify", None) is not None:
        client_kwargs["verify"] = resource.verify
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    if getattr(resource, "max_attempts", None):
        options["config_kwargs"] = {"retries": {"max_attempts": int(resource.max_attempts)}}
    return options


def storage_options_of(storage: Any) -> dict[str, Any] | None:
    """fsspec options from a storage resource: ours, dagster-aws's ``S3Resource`` (or anything with
    ``get_storage_options()`` or the S3 configuration fields), a mapping, or None."""
    if storage is None:
        return None
    if isinstance(storage, Mapping):
        return dict(storage)
    if callable(getattr(storage, "get_storage_options", None)):
        return dict(storage.get_storage_options())
    if hasattr(storage, "aws_access_key_id") or hasattr(storage, "endpoint_url"):  # dagster-aws S3Resource
        return s3_options_from(storage)
    raise dg.DagsterInvariantViolationError(
        f"a {type(storage).__name__} cannot give storage options: bind a VanceStorageResource or "
        "dagster-aws's S3Resource"
    )
