"""``VanceAIHook``: turns an Airflow connection into the core's VanceAI client.

The connection holds the token in ``password`` and an optional base URL in ``host`` (a bare
host or a URL; empty means the vendor's default). Extras (plain keys): ``api`` ('web', 'open'
or 'auto'), ``timeout`` (seconds), ``max_retries`` and ``max_concurrency`` (the default number
of jobs one task keeps in flight).

    AIRFLOW_CONN_VANCEAI_DEFAULT='{"conn_type": "vanceai", "password": "<token>",
                                   "extra": {"api": "open", "timeout": 30}}'

The hook only translates configuration: every network call lives in
:mod:`vance_provider.core`. Nothing heavy is imported at module level, so DAG files that
import the provider stay quick to parse.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from vance_provider.airflow_compat import AIRFLOW_V, BaseHook
from vance_provider.defaults import DEFAULT_API, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from vance_provider.hooks.storage import storage_options_from_connection  # noqa: F401 (storage_conn_id)

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from vance_provider.core import AsyncVanceClient, VanceClient

_EXTRA_KEYS = ("api", "timeout", "max_retries", "max_concurrency")


def _extras(conn: Connection) -> dict[str, Any]:
    """The connection's extras, parsed here rather than through ``extra_dejson``: that hands every
    string value to Airflow's secrets masker, which warns "Skipping masking for a secret as it's
    too short" for ``"open"`` or ``"web"``. None of these settings is a secret (the token is the
    password, which Airflow masks when it fetches the connection)."""
    import json

    from vance_provider.core.api.errors import ConfigurationError

    raw = conn.extra
    if not raw:
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        extra = json.loads(raw)
    except ValueError:
        raise ConfigurationError(f"connection {conn.conn_id!r}: its extra is not valid JSON") from None
    if not isinstance(extra, dict):
        raise ConfigurationError(f"connection {conn.conn_id!r}: its extra must be a JSON object")
    return extra


def _extra(conn: Connection, key: str) -> Any:
    """A plain extra key, or the ``extra__vanceai__`` form older UIs wrote."""
    extra = _extras(conn)
    value = extra.get(key)
    if value in (None, ""):
        value = extra.get(f"extra__vanceai__{key}")
    return None if value == "" else value


def _caller() -> str:
    from vance_provider.airflow_compat import AIRFLOW_VERSION

    return f"airflow/{AIRFLOW_VERSION}"


def connection_settings(conn: Connection) -> dict[str, Any]:
    """The connection's non-secret client settings, validated (safe to log)."""
    from vance_provider.core.api.errors import ConfigurationError
    from vance_provider.core.api.models import API_CHOICES
    from vance_provider.get_provider_info import FORM_API_VALUES

    api = str(_extra(conn, "api") or DEFAULT_API).strip().lower()
    api = FORM_API_VALUES.get(api, api)  # the form's spelling (open_api) or the short one (open)
    if api not in API_CHOICES:
        raise ConfigurationError(
            f"connection {conn.conn_id!r}: extra 'api' must be one of {', '.join(API_CHOICES)} "
            f"(or {', '.join(FORM_API_VALUES)}), got {api!r}"
        )
    try:
        timeout = float(_extra(conn, "timeout") or DEFAULT_TIMEOUT)
        retries = _extra(conn, "max_retries")
        max_retries = DEFAULT_MAX_RETRIES if retries is None else int(retries)
        concurrency = int(_extra(conn, "max_concurrency") or DEFAULT_MAX_CONCURRENCY)
        max_jobs = _extra(conn, "account_max_jobs")
        account_max_jobs = int(max_jobs) if max_jobs not in (None, "") else None
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"connection {conn.conn_id!r}: extras 'timeout', 'max_retries', "
            "'max_concurrency' and 'account_max_jobs' must be numbers"
        ) from None
    if timeout <= 0 or max_retries < 0 or concurrency < 1:
        raise ConfigurationError(
            f"connection {conn.conn_id!r}: timeout must be > 0, max_retries >= 0 and max_concurrency >= 1"
        )
    return {
        "api": api,
        "base_url": (conn.host or "").strip() or None,
        "timeout": timeout,
        "max_retries": max_retries,
        "max_concurrency": concurrency,
        # Where every worker of the account shares its rate, job cap and budgets (docs/account.md).
        "account_store": str(_extra(conn, "account_store") or "").strip() or None,
        "account_max_jobs": account_max_jobs,
    }


class VanceAIHook(BaseHook):
    """Interact with VanceAI (web API v1 or Open API v1) through the core client.

    :param vanceai_conn_id: the Airflow connection with the token in its password.
    :param storage_options: fsspec options used for the inputs and outputs (e.g. S3 credentials).
    """

    conn_name_attr = "vanceai_conn_id"
    default_conn_name = "vanceai_default"
    conn_type = "vanceai"
    hook_name = "VanceAI"

    def __init__(
        self,
        vanceai_conn_id: str = default_conn_name,
        *,
        storage_options: dict[str, Any] | None = None,
        caller: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vanceai_conn_id = vanceai_conn_id
        self.storage_options = storage_options
        self.caller = caller or _caller()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vanceai_conn_id={self.vanceai_conn_id!r})"

    # --- the connection -------------------------------------------------------------------------
    @cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.vanceai_conn_id)

    @cached_property
    def settings(self) -> dict[str, Any]:
        """Validated, non-secret settings of the connection (api, base_url, timeout, ...)."""
        return connection_settings(self.connection)

    def _client_args(self, conn: Connection) -> tuple[str, dict[str, Any]]:
        from vance_provider.core.api.errors import ConfigurationError
        from vance_provider.core.transport.retry import RetryPolicy

        token = conn.password or ""
        if not token:
            raise ConfigurationError(
                f"connection {conn.conn_id!r} has no API token",
                hint="put the VanceAI token (or sk_live_ key) in the connection's password",
            )
        s = connection_settings(conn)
        return token, {
            "api": s["api"],
            "base_url": s["base_url"],
            "timeout": s["timeout"],
            "retry": RetryPolicy(max_attempts=s["max_retries"] + 1),
            "caller": self.caller,
            "storage_options": self.storage_options,
            "account_store": s["account_store"],
            "account_max_jobs": s["account_max_jobs"],
        }

    # --- clients ---------------------------------------------------------------------------------
    def get_client(self) -> VanceClient:
        """A new blocking client; close it (or use it as a context manager) when done."""
        from vance_provider.core import VanceClient

        token, kwargs = self._client_args(self.connection)
        return VanceClient(token, **kwargs)

    @cached_property
    def client(self) -> VanceClient:
        """A client kept for the hook's lifetime (closed by :meth:`close`)."""
        return self.get_client()

    def get_conn(self) -> VanceClient:
        return self.client

    def close(self) -> None:
        if "client" in self.__dict__:
            self.__dict__.pop("client").close()

    async def get_async_client(self) -> AsyncVanceClient:
        """A new async client (an async context manager); for triggers.

        The connection is fetched and read in a worker thread, to its end
        (:mod:`vance_provider.triggerer_calls` says why).
        """
        from vance_provider.core import AsyncVanceClient
        from vance_provider.triggerer_calls import call_in_thread

        def client_args() -> tuple[str, dict[str, Any]]:
            return self._client_args(self.connection)

        token, kwargs = await call_in_thread(client_args)
        return AsyncVanceClient(token, **kwargs)

    @asynccontextmanager
    async def async_client(self) -> AsyncIterator[AsyncVanceClient]:
        """``async with hook.async_client() as client: ...`` (closed afterwards)."""
        client = await self.get_async_client()
        try:
            yield client
        finally:
            await client.aclose()

    # --- UI ----------------------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """One free call (the credit balance); the message never contains the token."""
        from vance_provider.core.api.errors import AuthenticationError, VanceError
        from vance_provider.core.secrets import redact

        try:
            with self.get_client() as client:
                balance = client.balance()
                api = client.api
        except AuthenticationError:
            return False, (
                "VanceAI rejected the API token: check the connection's password and its API "
                "('web' tokens and 'open' sk_live_ keys are not interchangeable)"
            )
        except VanceError as exc:
            return False, redact(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            return False, f"could not test the VanceAI connection ({type(exc).__name__})"
        return True, f"Connected to the VanceAI {api} API: {balance.available:g} credits available"

    if AIRFLOW_V < (3, 2):  # Airflow >= 3.2 builds the form from provider info's conn-fields

        @classmethod
        def get_connection_form_widgets(cls) -> dict[str, Any]:
            """The form's extra fields on Airflow 3.0/3.1, from the provider info's ``conn-fields``."""
            from vance_provider.get_provider_info import CONN_FIELDS

            return conn_fields_to_widgets(CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The provider info's ``ui-field-behaviour``, with placeholders for the extra fields."""
        from vance_provider.get_provider_info import UI_FIELD_BEHAVIOUR as ui

        return {
            "hidden_fields": list(ui["hidden-fields"]),
            "relabeling": dict(ui["relabeling"]),
            "placeholders": {
                **ui["placeholders"],
                "api": DEFAULT_API,
                "timeout": str(int(DEFAULT_TIMEOUT)),
                "max_retries": str(DEFAULT_MAX_RETRIES),
                "max_concurrency": str(DEFAULT_MAX_CONCURRENCY),
            },
        }


def conn_fields_to_widgets(fields: dict[str, Any]) -> dict[str, Any]:
    """WTForms widgets for Airflow < 3.2 from the declarative ``conn-fields`` of the provider info.

    Airflow 3.0 and 3.1 accept only string, integer, password and boolean fields (a hook with any
    other field is not registered at all): a choice is a string field that accepts its choices.
    """
    from wtforms import IntegerField, StringField
    from wtforms.validators import Optional, any_of

    widgets: dict[str, Any] = {}
    for name, spec in fields.items():
        schema = spec.get("schema", {})
        kinds = schema.get("type", [])
        kwargs = {"description": spec.get("description", ""), "default": schema.get("default")}
        if "enum" in schema:
            choices = [c for c in schema["enum"] if c]
            widgets[name] = StringField(spec["label"], validators=[Optional(), any_of(choices)], **kwargs)
        elif "integer" in kinds:
            widgets[name] = IntegerField(spec["label"], **kwargs)
        else:
            widgets[name] = StringField(spec["label"], **kwargs)
    return widgets
