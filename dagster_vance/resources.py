"""``VanceAIResource``: the VanceAI account as a Dagster resource.

The resource holds described configuration only; :meth:`VanceAIResource.get_client` builds the
core's client, which knows nothing of Dagster. The token is a secret: pass it with
``dg.EnvVar("VANCE_API_TOKEN")`` so that only the variable's *name* is stored in the run's
configuration, and it never shows in ``repr``, logs or metadata.

Example::

    import dagster as dg
    from dagster_vance import VanceAIResource, build_enhanced_dataset_asset

    photos = build_enhanced_dataset_asset("photos_x4", source="s3://in/photos/", destination="s3://out/x4/",
                                          tool="upscale", config={"scale": 4})
    defs = dg.Definitions(assets=[photos],
                          resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"))})
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field, PrivateAttr, field_validator

from vance_provider.core import AsyncVanceClient, BatchResult, BatchSpec, Progress, RetryPolicy, VanceClient
from vance_provider.core.models import Balance

ManifestRef = str | tuple[str, Mapping[str, Any] | None]


def _caller() -> str:
    return f"dagster/{dg.__version__}"


class VanceAIResource(dg.ConfigurableResource):
    """A VanceAI account (web API v1 or Open API v1) for assets, checks and sensors.

    Bound the jobs in flight across runs with a Dagster concurrency pool: the dataset assets run
    in the pool ``vanceai`` (``dagster instance concurrency set vanceai 2``).

    Example::

        defs = dg.Definitions(
            assets=[...],
            resources={"vanceai": VanceAIResource(api_token=dg.EnvVar("VANCE_API_TOKEN"), max_concurrency=8)},
        )
    """

    api_token: str = Field(
        repr=False,
        description="VanceAI API token (web API) or Open API key (sk_live_...); pass dg.EnvVar('VANCE_API_TOKEN').",
    )
    base_url: str | None = Field(
        default=None,
        description="Override the service URL: the simulator (http://127.0.0.1:8765), a proxy or a regional host.",
    )
    api: str = Field(
        default="auto",
        description="'web' (web API v1), 'open' (Open API v1), or 'auto': sk_live_ keys use the Open API.",
    )
    timeout: float = Field(default=30.0, description="Seconds to wait for one HTTP answer.")
    max_retries: int = Field(
        default=5,
        description="Retries of one retryable call (429, 5xx, dropped connections) with jittered backoff.",
    )
    max_concurrency: int = Field(
        default=8,
        description="Upper bound of jobs one run keeps in flight (each asset may ask for fewer).",
    )

    _client: VanceClient | None = PrivateAttr(default=None)

    @field_validator("api")
    @classmethod
    def _check_api(cls, value: str) -> str:
        if value not in ("auto", "web", "open", "visioncraft"):
            raise ValueError(f"api must be 'auto', 'web', 'open' or 'visioncraft', got {value!r}")
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
        from vance_provider.core import detect_api

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
        )
        with self.get_client() as client:  # the batch carries its own storage options
            return client.run_batch(spec, on_progress)

    def usage_report(self, manifests: Iterable[ManifestRef] = ()) -> pd.DataFrame:
        """The account's usage as a typed DataFrame (see ``vance_provider.core.credits``).

        Web API: the service's full history. Open API (which keeps no history): the charges of
        the finished jobs recorded in ``manifests``; each is a URL or ``(url, storage_options)``.
        """
        refs = [
            ref if isinstance(ref, str) else (ref[0], dict(ref[1]) if ref[1] else None) for ref in manifests
        ]
        with self.get_client() as client:
            return client.usage_report(refs)
