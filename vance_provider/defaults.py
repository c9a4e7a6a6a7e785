"""The APIs every face offers and the connection defaults: one place for the core, the Airflow
provider's metadata, the hook, the Dagster resource and the CLI.

This module imports nothing but ``typing``, so :mod:`vance_provider.get_provider_info` (which
Airflow imports on every ``providers list`` and UI start) reads it without loading the engine.
Everything else reads these names from :mod:`vance_provider.core.api.models`.
"""

from typing import Literal, get_args

ApiName = Literal["web", "open", "visioncraft"]
#: The APIs, each behind one backend (``core/backends``): the one list every face offers.
API_NAMES: tuple[ApiName, ...] = get_args(ApiName)
#: What a client, a connection, a resource or the CLI may name: an API, or ``auto`` (by the token).
ApiChoice = Literal["auto", ApiName]
API_CHOICES: tuple[str, ...] = get_args(ApiChoice)
#: The APIs' names in prose (messages, tables, charts).
API_TITLES: dict[str, str] = {"web": "web API v1", "open": "Open API v1", "visioncraft": "VisionCraft"}

#: A connection's (or a resource's) defaults.
DEFAULT_API = "auto"
DEFAULT_TIMEOUT = 30.0  # seconds to wait for one HTTP answer
DEFAULT_MAX_RETRIES = 5  # retries of one retryable call
DEFAULT_MAX_CONCURRENCY = 8  # jobs one task, run or command keeps in flight
