"""Storage credentials from an Airflow connection (``storage_conn_id``), through Airflow's object storage.

``storage_conn_id`` names an ``aws`` connection. Its filesystem is built by Airflow's own
object-storage layer (``airflow.sdk.io.get_fs``, what ``ObjectStoragePath("s3://...",
conn_id=...)`` uses), that is by the Amazon provider's ``get_fs``: every credential form the AWS
hook supports works as it does for Airflow (access keys, a session token, ``profile_name``,
``role_arn`` with ``assume_role_method`` / ``assume_role_kwargs``, web identity, SAML, and
``endpoint_url`` / ``region_name`` / ``service_config`` / ``config_kwargs`` in the extras).

The core takes fsspec URLs and a ``storage_options`` dict, so it is handed that filesystem's own
options: the provider's aiobotocore session (assumed-role credentials refresh themselves inside
it), the endpoint and the botocore config. For those options fsspec returns the very filesystem
instance the provider built, wherever the core opens a URL. Nothing secret leaves the process:
a deferred batch's trigger gets the connection id and resolves it again in the triggerer.

What cannot be used is refused with a :class:`~vance_provider.core.api.errors.ConfigurationError`
naming the connection, never replaced by other (environment) credentials: a connection type
without a filesystem here, a missing Amazon provider or s3fs, a connection that yields no
credentials at all. A connection that holds no credentials of its own uses the AWS default chain,
as Airflow does for it; that is said in the log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Connection

log = logging.getLogger(__name__)

#: The connection types ``storage_conn_id`` takes: the fsspec protocol Airflow's object storage
#: builds for each, and the provider that registers that filesystem.
STORAGE_CONNECTION_TYPES: dict[str, tuple[str, str]] = {"aws": ("s3", "apache-airflow-providers-amazon")}
#: Extras this provider read before it used the Amazon provider, under the names the AWS hook reads:
#: refused rather than ignored (the hook would sign without them).
_RENAMED_EXTRAS = {"session_token": "aws_session_token"}
#: Extra keys whose values are never written into an error message.
_SECRET_WORDS = ("secret", "token", "password", "credential", "key")

# The options built per connection (keyed by a digest of its fields): the same connection gives
# the same session, so fsspec reuses one filesystem instead of caching a new one per call in a
# long-lived triggerer; an edited connection gives a new digest, so new credentials are read.
_CACHE_SIZE = 16
_built: OrderedDict[str, dict[str, Any]] = OrderedDict()
_lock = threading.Lock()


def storage_options_from_connection(conn_id: str | None) -> dict[str, Any] | None:
    """fsspec options for the inputs and outputs from an Airflow connection, or None without one.

    An extra ``storage_options`` mapping of the connection is merged in as is (s3fs options such
    as ``requester_pays``). Raises ``ConfigurationError`` for what cannot be used.
    """
    if not conn_id:
        return None
    from vance_provider.airflow_compat import BaseHook
    from vance_provider.core.api.errors import ConfigurationError

    conn = BaseHook.get_connection(conn_id)
    kind = conn.conn_type or ""
    if kind not in STORAGE_CONNECTION_TYPES:
        raise ConfigurationError(
            f"storage connection {conn_id!r} is of type {kind!r}, which has no filesystem the VanceAI "
            "operators can use",
            hint="storage_conn_id takes an 'aws' connection (s3:// inputs and outputs); for other "
            "storage, give storage_options",
        )
    protocol, provider = STORAGE_CONNECTION_TYPES[kind]
    extra = conn.extra_dejson or {}
    renamed = sorted(k for k in _RENAMED_EXTRAS if k in extra and _RENAMED_EXTRAS[k] not in extra)
    if renamed:
        raise ConfigurationError(
            f"storage connection {conn_id!r}: the AWS connection reads "
            f"{', '.join(_RENAMED_EXTRAS[k] for k in renamed)}, not {', '.join(renamed)}",
            hint="rename the extra",
        )
    key = _digest(conn)
    with _lock:
        options = _built.get(key)
        if options is not None:
            _built.move_to_end(key)
    if options is None:
        options = _in_thread_without_loop(_build, conn, protocol, provider)
        with _lock:
            _built[key] = options
            while len(_built) > _CACHE_SIZE:
                _built.popitem(last=False)
    options = {**options, **(extra.get("storage_options") or {})}
    _fresh_listings(protocol, options)
    return options


def _fresh_listings(protocol: str, options: dict[str, Any]) -> None:
    """Each task or trigger run starts from fresh listings, as a new process would: fsspec keeps one
    filesystem for these options in this process, and with it the listings of earlier runs."""
    import fsspec

    try:
        fsspec.filesystem(protocol, **options).invalidate_cache()
    except Exception:  # a filesystem that cannot be made here fails, clearly, where it is used
        pass


def _digest(conn: Connection) -> str:
    fields = [conn.conn_id, conn.conn_type, conn.host, conn.login, conn.password, conn.schema, conn.port]
    return hashlib.sha256(json.dumps([*fields, conn.extra], default=str).encode()).hexdigest()


def _in_thread_without_loop(func: Any, *args: Any) -> Any:
    """``func(*args)`` here, or in a helper thread when this thread runs an event loop (the
    provider's ``get_fs`` calls ``asyncio.run``)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return func(*args)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vance-storage-conn") as pool:
        return pool.submit(func, *args).result()


def _build(conn: Connection, protocol: str, provider: str) -> dict[str, Any]:
    """The options of the filesystem Airflow's object storage builds for ``conn``."""
    from vance_provider.core.api.errors import ConfigurationError

    conn_id = conn.conn_id
    try:
        try:  # the Task SDK's (newer Airflow)
            from airflow.sdk.io import get_fs, has_fs
        except ImportError:  # Airflow 3.0
            from airflow.io import get_fs, has_fs  # type: ignore[attr-defined,no-redef]
        available = has_fs(protocol)
    except ImportError as exc:
        raise ConfigurationError(
            f"storage connection {conn_id!r}: Airflow's object storage could not load its filesystems "
            f"({_describe(exc, conn)})",
            hint=f"install a version of {provider} that matches this Airflow",
        ) from None
    if not available:
        raise ConfigurationError(
            f"storage connection {conn_id!r} ({conn.conn_type}) needs Airflow's {protocol}:// filesystem, "
            f"which comes with {provider}: it is not installed",
            hint=f"pip install {provider} (the vance-pipelines[airflow] extra includes it)",
        )
    try:
        fs = get_fs(protocol, conn_id)
    except ImportError as exc:  # the provider's filesystem needs s3fs
        raise ConfigurationError(
            f"storage connection {conn_id!r}: Airflow's {protocol}:// filesystem needs s3fs "
            f"({_describe(exc, conn)})",
            hint="pip install 'vance-pipelines[s3]'",
        ) from None
    except Exception as exc:  # bad extras, an assume-role call that failed, ...
        raise ConfigurationError(
            f"storage connection {conn_id!r}: Airflow could not build its {protocol}:// filesystem "
            f"({_describe(exc, conn)})",
            hint="check the connection (Admin > Connections > Test) and its extras",
        ) from None
    options = dict(fs.storage_options)
    if options.get("anon"):  # the provider found no credentials at all and went anonymous
        raise ConfigurationError(
            f"storage connection {conn_id!r} yields no AWS credentials (neither its own nor the AWS "
            "default chain's): anonymous access is not used for a named connection",
            hint="give the connection access keys, a role_arn or a profile_name",
        )
    method = _credential_method(options.get("session"))
    log.info(
        "VanceAI storage: connection %r -> Airflow's %s:// filesystem (%s credentials)",
        conn_id,
        protocol,
        method,
    )
    if method == "env":
        log.warning(
            "VanceAI storage: connection %r holds no credentials of its own, so the AWS default chain "
            "found them in the environment variables (as Airflow does for this connection)",
            conn_id,
        )
    return options


def _credential_method(session: Any) -> str:
    """How botocore found the session's credentials ('explicit', 'sts-assume-role', 'env', ...)."""
    if session is None:
        return "unknown"
    try:
        credentials = asyncio.run(session.get_credentials())  # resolved (and kept) by get_fs already
    except Exception:
        return "unknown"
    return str(getattr(credentials, "method", None) or "unknown")


def _describe(exc: BaseException, conn: Connection) -> str:
    """An exception as ``Type: message``, without the connection's secrets in it."""
    from vance_provider.core.secrets import redact

    text = f"{type(exc).__name__}: {exc}"
    extra = conn.extra_dejson or {}
    secrets = [
        conn.password,
        *(str(v) for k, v in extra.items() if any(w in k.lower() for w in _SECRET_WORDS)),
    ]
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return redact(text)
